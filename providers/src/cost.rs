//! What a call costs: each model's prices as data, the cost of a finished call from its
//! usage, and the estimate of a call before it is sent.
//!
//! Prices are USD. Token prices are per 1M tokens; per-image and per-megapixel prices are
//! per image. A model with no known price has `None`, never an invented number: its cost is
//! unknown and said to be. Vendors reprice often, so every figure can be overridden in
//! configuration (`[models.NAME.prices]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::options::size_for;
use crate::types::Usage;
use crate::{ImageOptions, ModelCapabilities};

/// A model's prices, USD, as the vendor bills them: tokens, whole images or megapixels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Prices {
    /// Per 1M text input tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_input: Option<f64>,
    /// Per 1M cached text input tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_text_input: Option<f64>,
    /// Per 1M image input tokens (edits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_input: Option<f64>,
    /// Per 1M cached image input tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_image_input: Option<f64>,
    /// Per 1M image output tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_output: Option<f64>,
    /// Per 1M text output tokens (models that also write text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_output: Option<f64>,
    /// Per image, for vendors that bill whole images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_image: Option<f64>,
    /// The first megapixel of an image, for vendors that bill by megapixel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_megapixel: Option<f64>,
    /// Each megapixel after the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_megapixel: Option<f64>,
    /// Typical cost of one 1024x1024 image by `quality` (`default` for a call that names
    /// none or says `auto`), scaled by pixels: the estimate before a call of a token-billed
    /// model, until observed usage corrects it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub typical: BTreeMap<String, f64>,
    /// Where the figures come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// How a cost figure was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CostBasis {
    /// From what the provider reported (tokens) or delivered (images, megapixels), times the prices.
    Usage,
    /// From typical figures: no usage was reported, or the call has not run yet.
    Estimate,
}

/// A cost in USD and how it was reached; `usd` is `None` when the prices are unknown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// The amount, USD; `None`: unknown.
    pub usd: Option<f64>,
    /// How it was reached.
    pub basis: CostBasis,
    /// Why it is unknown or approximate, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Cost {
    /// A cost with no price to reach it: unknown, with the reason.
    pub fn unknown(basis: CostBasis, why: impl Into<String>) -> Self {
        Self {
            usd: None,
            basis,
            note: Some(why.into()),
        }
    }

    /// A known amount.
    pub fn known(usd: f64, basis: CostBasis) -> Self {
        Self {
            usd: Some(usd),
            basis,
            note: None,
        }
    }

    /// The same cost with a note (joined to any note already there).
    pub fn noted(mut self, note: impl Into<String>) -> Self {
        let note = note.into();
        self.note = Some(match self.note.take() {
            Some(before) => format!("{before}; {note}"),
            None => note,
        });
        self
    }
}

/// What one call asks for, as far as its price goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order<'a> {
    /// Images requested.
    pub n: u32,
    /// The image size, when the request fixes one (`None`: the model chooses).
    pub size: Option<(u32, u32)>,
    /// The quality asked for, as sent (`None` or `auto`: the model's default).
    pub quality: Option<&'a str>,
}

/// The size a call is priced at when the model chooses (`auto`, or no size sent).
pub const DEFAULT_PRICED_SIZE: (u32, u32) = (1024, 1024);

impl<'a> Order<'a> {
    /// What `options` order from a model with `caps`: the count, the size they will be sent
    /// at (a ratio mapped as the provider maps it), the quality.
    pub fn of(options: &'a ImageOptions, caps: &ModelCapabilities) -> Self {
        let size = size_for(options, caps)
            .ok()
            .flatten()
            .and_then(|s| parse_size(&s));
        Order {
            n: options.n(),
            size,
            quality: options.quality.as_deref(),
        }
    }
}

/// `WxH` as numbers; `None` for `auto` or anything else.
pub fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (w, h) = size.split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// USD per token from a price per 1M tokens.
fn per_token(per_million: f64) -> f64 {
    per_million / 1_000_000.0
}

/// The cost of one image of `width` x `height` from per-image or per-megapixel prices.
fn image_price(prices: &Prices, (width, height): (u32, u32)) -> Option<f64> {
    if let Some(each) = prices.per_image {
        return Some(each);
    }
    let first = prices.first_megapixel?;
    let megapixels = f64::from(width) * f64::from(height) / 1_000_000.0;
    let rest = (megapixels - 1.0).max(0.0);
    Some(first + rest * prices.per_megapixel.unwrap_or(0.0))
}

impl Prices {
    /// Whether the vendor bills by tokens (the usage decides the cost) rather than by image.
    pub fn by_tokens(&self) -> bool {
        self.per_image.is_none() && self.first_megapixel.is_none()
    }

    /// Whether any figure is known: a model with none is unpriced.
    pub fn is_priced(&self) -> bool {
        !self.by_tokens() || self.image_output.is_some() || !self.typical.is_empty()
    }

    /// The fields `top` sets, over these.
    pub fn overlay(&self, top: &Prices) -> Prices {
        let pick = |a: Option<f64>, b: Option<f64>| b.or(a);
        let mut typical = self.typical.clone();
        typical.extend(top.typical.iter().map(|(k, v)| (k.clone(), *v)));
        Prices {
            text_input: pick(self.text_input, top.text_input),
            cached_text_input: pick(self.cached_text_input, top.cached_text_input),
            image_input: pick(self.image_input, top.image_input),
            cached_image_input: pick(self.cached_image_input, top.cached_image_input),
            image_output: pick(self.image_output, top.image_output),
            text_output: pick(self.text_output, top.text_output),
            per_image: pick(self.per_image, top.per_image),
            first_megapixel: pick(self.first_megapixel, top.first_megapixel),
            per_megapixel: pick(self.per_megapixel, top.per_megapixel),
            typical,
            source: top.source.clone().or_else(|| self.source.clone()),
        }
    }

    /// A figure that is negative or not a number, named, for configuration checks.
    pub fn invalid(&self) -> Option<String> {
        let fields = [
            ("text_input", self.text_input),
            ("cached_text_input", self.cached_text_input),
            ("image_input", self.image_input),
            ("cached_image_input", self.cached_image_input),
            ("image_output", self.image_output),
            ("text_output", self.text_output),
            ("per_image", self.per_image),
            ("first_megapixel", self.first_megapixel),
            ("per_megapixel", self.per_megapixel),
        ];
        let typical = self
            .typical
            .iter()
            .map(|(quality, v)| (quality.as_str(), Some(*v)));
        fields
            .into_iter()
            .chain(typical)
            .find(|(_, v)| v.is_some_and(|v| !v.is_finite() || v < 0.0))
            .map(|(name, v)| format!("{name} = {} is not a price", v.unwrap_or_default()))
    }

    /// The typical cost of one image at `quality`, with a note when the table has no figure
    /// for it and the dearest one stands in (an estimate that guards a budget errs high).
    fn typical_image(&self, quality: Option<&str>) -> Option<(f64, Option<String>)> {
        let wanted = match quality {
            None | Some("auto") => "default",
            Some(q) => q,
        };
        if let Some(usd) = self.typical.get(wanted) {
            return Some((*usd, None));
        }
        let (name, usd) = self.typical.iter().max_by(|a, b| a.1.total_cmp(b.1))?;
        Some((
            *usd,
            Some(format!(
                "no typical figure for quality `{wanted}`: estimated as `{name}`"
            )),
        ))
    }

    /// The cost of a call before it is sent, from per-image prices or the typical figures.
    pub fn estimate(&self, order: &Order<'_>) -> Cost {
        let size = order.size.unwrap_or(DEFAULT_PRICED_SIZE);
        let n = f64::from(order.n.max(1));
        if let Some(each) = image_price(self, size) {
            return Cost::known(each * n, CostBasis::Estimate);
        }
        match self.typical_image(order.quality) {
            Some((usd, note)) => {
                let scale = f64::from(size.0) * f64::from(size.1) / (1024.0 * 1024.0);
                let cost = Cost::known(usd * scale * n, CostBasis::Estimate);
                match note {
                    Some(note) => cost.noted(note),
                    None => cost,
                }
            }
            None => Cost::unknown(
                CostBasis::Estimate,
                "no typical per-image figure for this model",
            ),
        }
    }

    /// The cost of a finished call: `usage` times the token prices, or the images delivered
    /// (`sizes`) times the per-image prices; `None` when the usage cannot price it (no
    /// usage reported, or a token kind without a price).
    pub fn from_usage(&self, usage: Option<&Usage>, sizes: &[(u32, u32)]) -> Option<Cost> {
        if !self.by_tokens() {
            let mut total = 0.0;
            for size in sizes {
                total += image_price(self, *size)?;
            }
            return Some(Cost::known(total, CostBasis::Usage));
        }
        let tokens = Tokens::of(usage?)?;
        let mut note = None;
        let mut usd = 0.0;
        let mut charge = |count: u64, price: Option<f64>| -> Option<()> {
            if count > 0 {
                usd += count as f64 * per_token(price?);
            }
            Some(())
        };
        // A cached token kind without its own price is billed at the full rate: erring high.
        charge(
            tokens.cached_text_input,
            self.cached_text_input.or(self.text_input),
        )?;
        charge(
            tokens.cached_image_input,
            self.cached_image_input.or(self.image_input),
        )?;
        charge(tokens.text_input, self.text_input)?;
        charge(tokens.image_input, self.image_input)?;
        if tokens.unsplit_input > 0 {
            // The usage gave no split of its input: the dearer input rate, erring high.
            let rate = match (self.text_input, self.image_input) {
                (Some(t), Some(i)) => Some(t.max(i)),
                (t, i) => t.or(i),
            };
            charge(tokens.unsplit_input, rate)?;
            note = Some("the usage did not split text from image input: priced at the dearer rate");
        }
        charge(tokens.text_output, self.text_output.or(self.image_output))?;
        charge(tokens.image_output, self.image_output)?;
        let cost = Cost::known(usd, CostBasis::Usage);
        Some(match note {
            Some(note) => cost.noted(note),
            None => cost,
        })
    }
}

/// Token counts by kind, read from a [`Usage`] in the shapes OpenAI and Gemini report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tokens {
    text_input: u64,
    cached_text_input: u64,
    image_input: u64,
    cached_image_input: u64,
    /// Input tokens the usage did not split by kind.
    unsplit_input: u64,
    text_output: u64,
    image_output: u64,
}

impl Tokens {
    /// The counts of `usage`; `None` when it reports no token count at all.
    fn of(usage: &Usage) -> Option<Self> {
        let detail = |section: &str, field: &str| {
            usage
                .details
                .get(section)
                .and_then(|d| d.get(field))
                .and_then(serde_json::Value::as_u64)
        };
        if usage.input_tokens.is_none() && usage.output_tokens.is_none() {
            return None;
        }
        let input = usage.input_tokens.unwrap_or(0);
        let output = usage.output_tokens.unwrap_or(0);
        let mut tokens = Tokens::default();
        let text_in = detail("input_tokens_details", "text_tokens");
        let image_in = detail("input_tokens_details", "image_tokens");
        let cached = detail("input_tokens_details", "cached_tokens").unwrap_or(0);
        match (text_in, image_in) {
            (None, None) => tokens.unsplit_input = input,
            (text, image) => {
                let (text, image) = (text.unwrap_or(0), image.unwrap_or(0));
                // Cached tokens are counted within the kinds; without their split they
                // come off the text first, the cheaper kind, so the charge errs high.
                let cached_text = detail("input_tokens_details", "cached_text_tokens")
                    .unwrap_or_else(|| cached.min(text));
                let cached_image = detail("input_tokens_details", "cached_image_tokens")
                    .unwrap_or_else(|| cached.saturating_sub(cached_text).min(image));
                tokens.cached_text_input = cached_text.min(text);
                tokens.cached_image_input = cached_image.min(image);
                tokens.text_input = text - tokens.cached_text_input;
                tokens.image_input = image - tokens.cached_image_input;
                // Whatever the split leaves out of the total is still input.
                tokens.unsplit_input = input.saturating_sub(text + image);
            }
        }
        match detail("output_tokens_details", "text_tokens") {
            Some(text) => {
                tokens.text_output = text.min(output);
                tokens.image_output = output - tokens.text_output;
            }
            None => tokens.image_output = output,
        }
        Some(tokens)
    }
}

/// The figures GPT Image 2 is billed at and typically costs (1024x1024, by quality).
fn gpt_image_2_prices() -> Prices {
    Prices {
        text_input: Some(5.0),
        cached_text_input: Some(1.25),
        image_input: Some(8.0),
        cached_image_input: Some(2.0),
        image_output: Some(30.0),
        text_output: Some(10.0),
        typical: BTreeMap::from([
            ("low".into(), 0.02),
            ("medium".into(), 0.07),
            ("high".into(), 0.19),
            // OpenAI's `auto` picks per prompt: priced as `high`, erring high.
            ("default".into(), 0.19),
        ]),
        source: Some(
            "OpenAI model page, 2026-12-01: $5 text in, $8 image in, $30 image out per 1M \
             tokens; typical per-image figures ~$0.02 low, $0.07 medium, $0.19 high at 1024x1024"
                .into(),
        ),
        ..Prices::default()
    }
}

/// Prices of a kind-neutral model name as built in (`None`: not known).
///
/// The names are OpenAI's, which Azure and compatible servers serve too; vendors with their
/// own names price them in their own catalogs through [`builtin_for`].
pub fn builtin(model: &str) -> Option<Prices> {
    let family = |prefix: &str| model == prefix || model.starts_with(&format!("{prefix}-"));
    if family("gpt-image-2.6-flare") || family("gpt-image-2.6-sunburst") {
        // The same token rates as GPT Image 2; at low and medium quality 2.6 spends 3-4x the
        // tokens of 2.5 (unconfirmed), so those typical figures are raised to high's.
        let mut prices = gpt_image_2_prices();
        prices.typical.insert("low".into(), 0.07);
        prices.typical.insert("medium".into(), 0.19);
        prices.source = Some(
            "OpenAI model page, 2026-12-01: $5 text in, $8 image in, $30 image out per 1M \
             tokens; typical figures of GPT Image 2, low and medium raised for 2.6's \
             3-4x token use (unconfirmed)"
                .into(),
        );
        return Some(prices);
    }
    if family("gpt-image-2.5-flare") || family("gpt-image-2.5-sunburst") || family("gpt-image-2") {
        return Some(gpt_image_2_prices());
    }
    if family("gpt-image-1-mini") {
        return Some(Prices {
            text_input: Some(2.0),
            cached_text_input: Some(0.2),
            image_input: Some(2.5),
            cached_image_input: Some(0.25),
            image_output: Some(8.0),
            typical: BTreeMap::from([
                ("low".into(), 0.005),
                ("medium".into(), 0.011),
                ("high".into(), 0.036),
                ("default".into(), 0.036),
            ]),
            source: Some("OpenAI model page (model shut down 2026-12-01)".into()),
            ..Prices::default()
        });
    }
    None
}

/// Prices of a model under a vendor's own names (Gemini, Stability, FLUX), or of the mock.
pub fn builtin_for(model: &str) -> Option<Prices> {
    let per_image = |usd: f64, source: &str| Prices {
        per_image: Some(usd),
        source: Some(source.into()),
        ..Prices::default()
    };
    let megapixels = |first: f64, each: f64| Prices {
        first_megapixel: Some(first),
        per_megapixel: Some(each),
        source: Some("BFL pricing: 1 credit = $0.01, FLUX.2 billed per megapixel".into()),
        ..Prices::default()
    };
    let gemini = |image_output: f64, text_input: Option<f64>, typical: f64, source: &str| Prices {
        text_input,
        image_input: text_input,
        image_output: Some(image_output),
        text_output: None,
        typical: BTreeMap::from([("default".into(), typical)]),
        source: Some(source.into()),
        ..Prices::default()
    };
    Some(match model {
        crate::mock::MOCK_MODEL => per_image(0.0, "the mock provider is free"),
        "gemini-3-pro-image" => gemini(
            120.0,
            None,
            0.134,
            "ai.google.dev/pricing 2026-10-07: $120 per 1M image tokens, ~$0.134 per 1K/2K image",
        ),
        "gemini-nano-banana-2.1" => gemini(
            30.0,
            Some(1.5),
            0.0336,
            "litellm: $30 per 1M image tokens, $1.50 text in; ~$0.0336 per 1K image",
        ),
        "sd3.5-large" => per_image(0.065, "third-party figure, unconfirmed"),
        "flux-2-klein-4b" => megapixels(0.014, 0.001),
        "flux-2-klein-9b" => megapixels(0.015, 0.002),
        "flux-2-pro" => megapixels(0.03, 0.015),
        "flux-2-max" => megapixels(0.07, 0.03),
        "flux-2-flex" => megapixels(0.05, 0.05),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(json: serde_json::Value) -> Usage {
        serde_json::from_value(json).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn openai_usage_is_priced_by_kind() {
        let prices = builtin("gpt-image-2").unwrap();
        let u = usage(serde_json::json!({
            "input_tokens": 1050, "output_tokens": 6240, "total_tokens": 7290,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 1000, "cached_tokens": 40}
        }));
        let cost = prices.from_usage(Some(&u), &[(1024, 1024)]).unwrap();
        // 40 cached text at 1.25, 10 text at 5, 1000 image at 8, 6240 out at 30.
        let expected = (40.0 * 1.25 + 10.0 * 5.0 + 1000.0 * 8.0 + 6240.0 * 30.0) / 1e6;
        assert!(close(cost.usd.unwrap(), expected), "{cost:?}");
        assert_eq!(cost.basis, CostBasis::Usage);
        assert_eq!(cost.note, None);
    }

    #[test]
    fn unsplit_input_is_priced_at_the_dearer_rate() {
        let prices = builtin("gpt-image-2.6-flare").unwrap();
        let u = usage(serde_json::json!({"input_tokens": 100, "output_tokens": 1000}));
        let cost = prices.from_usage(Some(&u), &[]).unwrap();
        assert!(close(
            cost.usd.unwrap(),
            (100.0 * 8.0 + 1000.0 * 30.0) / 1e6
        ));
        assert!(cost.note.unwrap().contains("dearer"));
    }

    #[test]
    fn output_text_tokens_have_their_own_rate() {
        let prices = builtin("gpt-image-2").unwrap();
        let u = usage(serde_json::json!({
            "input_tokens": 0, "output_tokens": 1100,
            "output_tokens_details": {"text_tokens": 100, "image_tokens": 1000}
        }));
        let cost = prices.from_usage(Some(&u), &[]).unwrap();
        assert!(close(
            cost.usd.unwrap(),
            (100.0 * 10.0 + 1000.0 * 30.0) / 1e6
        ));
    }

    #[test]
    fn no_usage_or_no_rate_gives_no_cost() {
        let prices = builtin("gpt-image-2").unwrap();
        assert_eq!(prices.from_usage(None, &[(1024, 1024)]), None);
        let empty = usage(serde_json::json!({"total_tokens": 5}));
        assert_eq!(prices.from_usage(Some(&empty), &[]), None);
        let output_only = Prices {
            image_output: Some(30.0),
            ..Prices::default()
        };
        let with_input = usage(serde_json::json!({"input_tokens": 10, "output_tokens": 10}));
        assert_eq!(output_only.from_usage(Some(&with_input), &[]), None);
    }

    #[test]
    fn estimates_scale_by_pixels_count_and_quality() {
        let prices = builtin("gpt-image-2").unwrap();
        let order = |n, size, quality| Order { n, size, quality };
        let low = prices.estimate(&order(1, Some((1024, 1024)), Some("low")));
        assert!(close(low.usd.unwrap(), 0.02));
        assert_eq!(low.basis, CostBasis::Estimate);
        let medium_wide = prices.estimate(&order(2, Some((1536, 1024)), Some("medium")));
        assert!(close(medium_wide.usd.unwrap(), 0.07 * 1.5 * 2.0));
        let auto = prices.estimate(&order(1, None, Some("auto")));
        assert!(close(auto.usd.unwrap(), 0.19));
        let xhigh = prices.estimate(&order(1, None, Some("xhigh")));
        assert!(close(xhigh.usd.unwrap(), 0.19));
        assert!(xhigh.note.unwrap().contains("xhigh"));
    }

    #[test]
    fn image_priced_models_cost_what_they_delivered() {
        let flux = builtin_for("flux-2-pro").unwrap();
        let cost = flux
            .from_usage(None, &[(1024, 1024), (2000, 1000)])
            .unwrap();
        let mp = 1024.0 * 1024.0 / 1e6;
        assert!(close(
            cost.usd.unwrap(),
            0.03 + (mp - 1.0) * 0.015 + 0.03 + 0.015
        ));
        let estimate = flux.estimate(&Order {
            n: 1,
            size: Some((1000, 1000)),
            quality: None,
        });
        assert!(close(estimate.usd.unwrap(), 0.03));
        let mock = builtin_for(crate::mock::MOCK_MODEL).unwrap();
        assert_eq!(mock.from_usage(None, &[(64, 64)]).unwrap().usd, Some(0.0));
    }

    #[test]
    fn unknown_models_are_unpriced() {
        assert_eq!(builtin("stable-image-ultra"), None);
        assert_eq!(builtin_for("fal-ai/flux/schnell"), None);
        let none = Prices::default();
        assert!(!none.is_priced());
        let estimate = none.estimate(&Order {
            n: 1,
            size: None,
            quality: None,
        });
        assert_eq!(estimate.usd, None);
        assert!(estimate.note.is_some());
    }

    #[test]
    fn overlay_and_checks() {
        let base = builtin("gpt-image-2").unwrap();
        let top = Prices {
            image_output: Some(20.0),
            typical: BTreeMap::from([("low".into(), 0.01)]),
            ..Prices::default()
        };
        let merged = base.overlay(&top);
        assert_eq!(merged.image_output, Some(20.0));
        assert_eq!(merged.text_input, Some(5.0));
        assert_eq!(merged.typical["low"], 0.01);
        assert_eq!(merged.typical["high"], 0.19);
        assert_eq!(merged.invalid(), None);
        let bad = Prices {
            per_image: Some(-1.0),
            ..Prices::default()
        };
        assert!(bad.invalid().unwrap().contains("per_image"));
    }
}
