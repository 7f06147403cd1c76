//! The cost of each upstream call: an estimate before it is sent, the cost after, and the
//! running averages of observed costs that correct the estimates.
//!
//! Prices come from the catalog (`imagegen_providers::cost`, overridable per model in
//! `[models.NAME.prices]`). A model with no known price costs `null`, with a note: never an
//! invented number.
//!
//! # For budgets
//! [`crate::engine::Engine`] asks [`Costs::estimate`] before a call is sent: that figure
//! (`usd`, `None` when the model is unpriced) is what a budget reserves. After the call,
//! [`Charge`] says what to settle with: its `cost.usd` and whether the provider billed the
//! call ([`Billing`]); a call that failed after its request was sent (a timeout, a
//! cancellation, a dropped connection) is [`Billing::PossiblyBilled`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use imagegen_providers::{
    cost::{Cost, CostBasis, Order, Prices},
    ErrorKind, ProviderError, Usage,
};
use serde::{Deserialize, Serialize};

/// Whether the provider billed a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    /// It answered: the cost is what it charged.
    Billed,
    /// It refused before doing any work (a 4xx, a 5xx, nothing sent): nothing is charged.
    NotBilled,
    /// The request was sent and no answer came (a timeout, a cancellation, a dropped
    /// connection): the provider may have charged for it.
    PossiblyBilled,
}

/// What one finished call cost and whether it was billed.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The cost; `usd: None` when the model is unpriced.
    pub cost: Cost,
    /// Whether the provider billed it.
    pub billing: Billing,
}

/// What a call's price depends on, taken from its request before it is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Priced {
    /// The model's prices; `None`: unpriced.
    pub prices: Option<Prices>,
    /// Images asked for.
    pub n: u32,
    /// The size it will be sent at, when fixed.
    pub size: Option<(u32, u32)>,
    /// The quality asked for.
    pub quality: Option<String>,
}

impl Priced {
    /// The price terms of `options` on a model with `caps`.
    pub fn of(
        caps: &imagegen_providers::ModelCapabilities,
        options: &imagegen_providers::ImageOptions,
    ) -> Self {
        let order = Order::of(options, caps);
        Self {
            prices: caps.prices.clone(),
            n: order.n,
            size: order.size,
            quality: order.quality.map(str::to_string),
        }
    }

    /// As an [`Order`].
    pub fn order(&self) -> Order<'_> {
        Order {
            n: self.n,
            size: self.size,
            quality: self.quality.as_deref(),
        }
    }
}

/// A call's cost as results, logs and the ledger show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CallCost {
    /// USD; `null`: unknown (the model has no known price; see `note`).
    pub usd: Option<f64>,
    /// `usage` (the provider's token usage, or the images it delivered, times the prices) or
    /// `estimate` (typical figures: no usage was reported).
    pub basis: CostBasis,
    /// Why the figure is unknown or approximate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The estimate made before the call was sent, USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_usd: Option<f64>,
}

impl CallCost {
    /// `cost`, estimated at `estimate_usd` before the call.
    pub fn new(cost: Cost, estimate_usd: Option<f64>) -> Self {
        Self {
            usd: cost.usd,
            basis: cost.basis,
            note: cost.note,
            estimate_usd,
        }
    }
}

/// Output tokens one streamed partial image costs at OpenAI (per the image API guide).
const PARTIAL_IMAGE_TOKENS: u64 = 100;

/// A running average of observed cost per image for one model, size and quality.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Observed {
    calls: u64,
    mean_usd_per_image: f64,
}

/// Estimates and costs of calls, with what this process (and earlier ones, through the
/// file) observed; shared by every engine of the process.
#[derive(Debug, Default)]
pub struct Costs {
    observed: Mutex<BTreeMap<String, Observed>>,
    /// Where the averages persist (beside the usage ledger); `None`: in memory only.
    file: Option<PathBuf>,
}

/// The key of a running average: model, size as ordered (`auto` when the model chooses), quality.
fn observed_key(model: &str, order: &Order<'_>) -> String {
    let size = order
        .size
        .map_or_else(|| "auto".to_string(), |(w, h)| format!("{w}x{h}"));
    format!("{model}|{size}|{}", order.quality.unwrap_or("auto"))
}

impl Costs {
    /// Costs whose observations persist in `file` (read now; a missing or broken file starts afresh).
    pub fn persisted(file: PathBuf) -> Self {
        let observed = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            observed: Mutex::new(observed),
            file: Some(file),
        }
    }

    /// Where the observations persist.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Observed>> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cost of `order` on `model` before it is sent: the typical figure (or per-image
    /// price), corrected by the average of the calls observed like it, the table counting as
    /// one observation.
    pub fn estimate(&self, prices: Option<&Prices>, model: &str, order: &Order<'_>) -> Cost {
        let Some(prices) = prices.filter(|p| p.is_priced()) else {
            return unpriced(model, CostBasis::Estimate);
        };
        let table = prices.estimate(order);
        if !prices.by_tokens() {
            return table;
        }
        let Some(seen) = self.observed().get(&observed_key(model, order)).copied() else {
            return table;
        };
        let n = f64::from(order.n.max(1));
        let observed_total = seen.mean_usd_per_image * n * seen.calls as f64;
        let (usd, weight) = match table.usd {
            Some(usd) => (usd + observed_total, seen.calls as f64 + 1.0),
            None => (observed_total, seen.calls as f64),
        };
        Cost {
            usd: Some(usd / weight),
            basis: CostBasis::Estimate,
            note: Some(format!(
                "corrected by {} observed call{}",
                seen.calls,
                if seen.calls == 1 { "" } else { "s" }
            )),
        }
    }

    /// What a successful call cost: its usage times the prices, else the estimate (marked as one).
    /// A cost from usage updates the running average of calls like it.
    pub fn succeeded(
        &self,
        prices: Option<&Prices>,
        model: &str,
        order: &Order<'_>,
        usage: Option<&Usage>,
        sizes: &[(u32, u32)],
    ) -> Cost {
        let Some(prices) = prices.filter(|p| p.is_priced()) else {
            return unpriced(model, CostBasis::Usage);
        };
        match prices.from_usage(usage, sizes) {
            Some(cost) => {
                if let (true, Some(usd), false) = (prices.by_tokens(), cost.usd, sizes.is_empty()) {
                    self.observe(model, order, usd / sizes.len() as f64);
                }
                cost
            }
            None => self
                .estimate(Some(prices), model, order)
                .noted("the provider reported no usage"),
        }
    }

    /// What a failed call cost: nothing when the provider refused it, the partial images it
    /// streamed when it billed those, and the estimate, possibly billed, when the request
    /// went out and no answer came back.
    pub fn failed(
        &self,
        prices: Option<&Prices>,
        model: &str,
        order: &Order<'_>,
        error: &ProviderError,
        requested: bool,
        partial_images: usize,
    ) -> Charge {
        let unanswered = matches!(
            error.kind,
            ErrorKind::Timeout | ErrorKind::Cancelled | ErrorKind::Network
        );
        if requested && unanswered {
            return Charge {
                cost: self
                    .estimate(prices, model, order)
                    .noted("sent but unanswered: possibly billed"),
                billing: Billing::PossiblyBilled,
            };
        }
        if partial_images > 0 {
            if let Some(rate) = prices.and_then(|p| p.image_output) {
                let tokens = PARTIAL_IMAGE_TOKENS * partial_images as u64;
                return Charge {
                    cost: Cost::known(tokens as f64 * rate / 1_000_000.0, CostBasis::Estimate)
                        .noted(format!("{partial_images} partial image(s) streamed")),
                    billing: Billing::Billed,
                };
            }
        }
        Charge {
            cost: Cost::known(0.0, CostBasis::Usage),
            billing: Billing::NotBilled,
        }
    }

    /// Adds one observed cost per image to the average of calls like `order`.
    fn observe(&self, model: &str, order: &Order<'_>, usd_per_image: f64) {
        if !usd_per_image.is_finite() || usd_per_image < 0.0 {
            return;
        }
        let snapshot = {
            let mut observed = self.observed();
            let seen = observed
                .entry(observed_key(model, order))
                .or_insert(Observed {
                    calls: 0,
                    mean_usd_per_image: 0.0,
                });
            seen.calls += 1;
            seen.mean_usd_per_image +=
                (usd_per_image - seen.mean_usd_per_image) / seen.calls as f64;
            self.file.as_ref().map(|_| observed.clone())
        };
        if let (Some(file), Some(snapshot)) = (self.file.clone(), snapshot) {
            // A few hundred bytes, written whole and renamed into place: a crash keeps the
            // previous averages, never half of a file.
            let write = move || -> std::io::Result<()> {
                let tmp = file.with_extension("json.tmp");
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&tmp, serde_json::to_vec_pretty(&snapshot)?)?;
                std::fs::rename(&tmp, &file)
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || {
                        if let Err(e) = write() {
                            tracing::warn!("cannot save the observed costs: {e}");
                        }
                    });
                }
                Err(_) => {
                    let _ = write();
                }
            }
        }
    }
}

/// The cost of a call on a model without a known price.
fn unpriced(model: &str, basis: CostBasis) -> Cost {
    Cost::unknown(
        basis,
        format!("no known price for `{model}`: set [models.\"{model}\".prices] to count it"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(quality: Option<&str>) -> Order<'_> {
        Order {
            n: 1,
            size: Some((1024, 1024)),
            quality,
        }
    }

    fn usage(output_tokens: u64) -> Usage {
        serde_json::from_value(serde_json::json!({
            "input_tokens": 0, "output_tokens": output_tokens
        }))
        .unwrap()
    }

    #[test]
    fn observed_costs_correct_the_estimate_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("observed.json");
        let prices = imagegen_providers::cost::builtin("gpt-image-2");
        let costs = Costs::persisted(file.clone());
        let before = costs.estimate(prices.as_ref(), "gpt-image-2", &order(Some("low")));
        assert!((before.usd.unwrap() - 0.02).abs() < 1e-9);
        // Two calls at $0.05 an image: (0.02 + 0.05 + 0.05) / 3.
        for _ in 0..2 {
            let cost = costs.succeeded(
                prices.as_ref(),
                "gpt-image-2",
                &order(Some("low")),
                Some(&usage(5000 / 3)),
                &[(1024, 1024)],
            );
            assert_eq!(cost.basis, CostBasis::Usage);
        }
        let per_image = (5000 / 3) as f64 * 30.0 / 1e6;
        let after = costs.estimate(prices.as_ref(), "gpt-image-2", &order(Some("low")));
        let expected = (0.02 + 2.0 * per_image) / 3.0;
        assert!((after.usd.unwrap() - expected).abs() < 1e-9, "{after:?}");
        assert!(after.note.unwrap().contains("2 observed calls"));
        // Another quality has its own average.
        let high = costs.estimate(prices.as_ref(), "gpt-image-2", &order(Some("high")));
        assert!((high.usd.unwrap() - 0.19).abs() < 1e-9);
        // The averages are written in the background; a new process reads them.
        for _ in 0..100 {
            if file.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let again = Costs::persisted(file);
        let reread = again.estimate(prices.as_ref(), "gpt-image-2", &order(Some("low")));
        assert!((reread.usd.unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn unpriced_models_cost_null_with_a_note() {
        let costs = Costs::default();
        let cost = costs.estimate(None, "sd-turbo", &order(None));
        assert_eq!(cost.usd, None);
        assert!(cost.note.unwrap().contains("[models.\"sd-turbo\".prices]"));
        let after = costs.succeeded(None, "sd-turbo", &order(None), None, &[(64, 64)]);
        assert_eq!((after.usd, after.basis), (None, CostBasis::Usage));
    }

    #[test]
    fn no_usage_falls_back_to_the_estimate() {
        let costs = Costs::default();
        let prices = imagegen_providers::cost::builtin("gpt-image-2");
        let cost = costs.succeeded(
            prices.as_ref(),
            "gpt-image-2",
            &order(Some("medium")),
            None,
            &[(1024, 1024)],
        );
        assert_eq!(cost.basis, CostBasis::Estimate);
        assert!((cost.usd.unwrap() - 0.07).abs() < 1e-9);
        assert!(cost.note.unwrap().contains("no usage"));
    }

    #[test]
    fn failures_cost_nothing_unless_sent_and_unanswered_or_streamed() {
        let costs = Costs::default();
        let prices = imagegen_providers::cost::builtin("gpt-image-2");
        let error = |kind| ProviderError::new(kind, "x");
        let refused = costs.failed(
            prices.as_ref(),
            "gpt-image-2",
            &order(Some("high")),
            &error(ErrorKind::InvalidRequest),
            true,
            0,
        );
        assert_eq!(refused.billing, Billing::NotBilled);
        assert_eq!(refused.cost.usd, Some(0.0));
        let timed_out = costs.failed(
            prices.as_ref(),
            "gpt-image-2",
            &order(Some("high")),
            &error(ErrorKind::Timeout),
            true,
            0,
        );
        assert_eq!(timed_out.billing, Billing::PossiblyBilled);
        assert!((timed_out.cost.usd.unwrap() - 0.19).abs() < 1e-9);
        let never_sent = costs.failed(
            prices.as_ref(),
            "gpt-image-2",
            &order(Some("high")),
            &error(ErrorKind::Timeout),
            false,
            0,
        );
        assert_eq!(never_sent.billing, Billing::NotBilled);
        let streamed = costs.failed(
            prices.as_ref(),
            "gpt-image-2",
            &order(Some("high")),
            &error(ErrorKind::ContentPolicy),
            true,
            2,
        );
        assert_eq!(streamed.billing, Billing::Billed);
        assert!((streamed.cost.usd.unwrap() - 200.0 * 30.0 / 1e6).abs() < 1e-12);
    }
}
