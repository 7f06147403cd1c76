//! `generate_images`: many images in one call. Items run concurrently within the in-flight
//! limits, come back in input order, and fail one by one: a failure never hides the others.

use std::{sync::Arc, time::Instant};

use futures::stream::{FuturesUnordered, StreamExt as _};
use imagegen_providers::ImageOptions;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cost::CallCost;
use crate::{
    config::Delivery,
    engine::{CallContext, Engine, GenerateParams, Generation},
    error::ToolError,
    progress::Progress,
    storage::StoredImage,
};

/// The parameters of `generate_images`: `prompts`, or `items`, or `prompt` with `count`; the
/// other parameters apply to every item unless an item sets its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct BatchParams {
    /// One image per prompt (more with `n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<String>>,
    /// One entry per item, each with its own `prompt` and any parameters of `generate_image`
    /// that differ from the shared ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<GenerateParams>>,
    /// With `count`: that many images of this one prompt (variations of one idea).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// With `prompt`: how many images to make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Shared: which configured provider or route to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Shared: providers to move to when the first fails, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Vec<String>>,
    /// Shared: model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Shared: a prompt preset (see `list_providers`), for every item that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Shared by every item that does not set its own: size, shape, quality, format and the
    /// other image options, as for `generate_image` (streaming `partial_images` excepted).
    #[serde(flatten)]
    pub options: ImageOptions,
    /// `preview` (default), `link` or `full`; inline previews of the whole batch share one budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Shared: serve items identical to earlier requests from the store, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// The user agreed to the whole batch's estimated cost, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_cost: Option<bool>,
}

/// One item's outcome, at its input position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ItemResult {
    /// The item's position in the input (0-based).
    pub index: usize,
    /// Its prompt, as given.
    pub prompt: String,
    /// The prompt as it went upstream, after the preset's template (absent when the item
    /// failed before anything was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_sent: Option<String>,
    /// The prompt preset the item used (its own, else the shared one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The saved images (empty on failure).
    pub images: Vec<StoredImage>,
    /// The failure, or null on success.
    pub error: Option<ToolError>,
    /// The provider that served it (items of a routed batch may be served by different ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model that served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt as the provider rewrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// What the caller should know: a replacement model, a deprecation, parameters dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The images came from the cache: an identical earlier request made them, at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<String>,
    /// What the item cost (its share, when items shared one request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CallCost>,
}

/// Counts for the whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchSummary {
    /// Items asked for.
    pub requested: usize,
    /// Items that produced their images.
    pub succeeded: usize,
    /// Items that failed.
    pub failed: usize,
    /// Wall time of the whole batch, milliseconds.
    pub elapsed_ms: u64,
    /// What the batch cost, USD, over the items whose cost is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// The structured result of `generate_images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchOutput {
    /// Every item, in input order.
    pub results: Vec<ItemResult>,
    /// Counts.
    pub summary: BatchSummary,
    /// A failure of the request as a whole (bad parameters), before any item ran.
    pub error: Option<ToolError>,
}

impl BatchOutput {
    /// The output of a batch refused as a whole (bad parameters) before any item ran.
    pub fn failure(error: ToolError, elapsed_ms: u64) -> Self {
        Self {
            results: Vec::new(),
            summary: BatchSummary {
                requested: 0,
                succeeded: 0,
                failed: 0,
                elapsed_ms,
                cost_usd: None,
            },
            error: Some(error),
        }
    }
}

/// Items that one upstream request serves: `indices` share one prompt and the request's `n`.
#[derive(Debug, Clone)]
struct Group {
    indices: Vec<usize>,
    params: GenerateParams,
}

/// Overlays the shared parameters under an item's own.
fn with_shared(item: GenerateParams, shared: &BatchParams) -> GenerateParams {
    let mut options = item.options.or(&shared.options);
    // Streaming previews are per call, and a batch item's progress has no place for them.
    options.partial_images = None;
    GenerateParams {
        prompt: item.prompt,
        provider: item.provider.or_else(|| shared.provider.clone()),
        fallback: item.fallback.or_else(|| shared.fallback.clone()),
        model: item.model.or_else(|| shared.model.clone()),
        preset: item.preset.or_else(|| shared.preset.clone()),
        options,
        delivery: None,
        cache: item.cache.or(shared.cache),
        filename: item.filename,
        confirm_cost: None,
    }
}

/// Checks the request's shape and splits it into upstream requests, returning the item count.
fn plan(params: &BatchParams, engine: &Engine) -> Result<(usize, Vec<Group>), ToolError> {
    let forms = [
        params.prompts.is_some(),
        params.items.is_some(),
        params.prompt.is_some() || params.count.is_some(),
    ];
    if forms.iter().filter(|&&f| f).count() != 1 {
        return Err(ToolError::invalid_param(
            "prompts",
            "give exactly one of: `prompts` (a list of strings), `items` (a list of objects with a prompt each), or `prompt` with `count`",
        ));
    }
    let max = engine.max_batch_items();
    let too_many = |n: usize, param: &str| {
        ToolError::invalid_param(
            param,
            format!("{n} items asked for; one call takes 1 to {max} (batch.max_items)"),
        )
    };
    let single = |i: usize, p: GenerateParams| Group {
        indices: vec![i],
        params: p,
    };
    if let Some(prompts) = &params.prompts {
        if prompts.is_empty() || prompts.len() > max {
            return Err(too_many(prompts.len(), "prompts"));
        }
        let groups = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let item = GenerateParams {
                    prompt: prompt.clone(),
                    ..GenerateParams::default()
                };
                single(i, with_shared(item, params))
            })
            .collect();
        return Ok((prompts.len(), groups));
    }
    if let Some(items) = &params.items {
        if items.is_empty() || items.len() > max {
            return Err(too_many(items.len(), "items"));
        }
        let groups = items
            .iter()
            .enumerate()
            .map(|(i, item)| single(i, with_shared(item.clone(), params)))
            .collect();
        return Ok((items.len(), groups));
    }
    let (Some(prompt), Some(count)) = (&params.prompt, params.count) else {
        return Err(ToolError::invalid_param(
            "count",
            "`prompt` and `count` go together: how many images of this prompt",
        ));
    };
    let count = count as usize;
    if count == 0 || count > max {
        return Err(too_many(count, "count"));
    }
    if params.options.n.is_some_and(|n| n != 1) {
        return Err(ToolError::invalid_param(
            "n",
            "with `count`, leave `n` out: `count` is the number of images",
        ));
    }
    let template = with_shared(
        GenerateParams {
            prompt: prompt.clone(),
            ..GenerateParams::default()
        },
        params,
    );
    // One request serves as many images as the model's `n` allows; with a seed each image
    // needs its own request, or they would all be the same.
    let prepared = engine.prepare(&template)?;
    let per_request = if template.options.seed.is_some() {
        1
    } else {
        let model = &prepared.request.model;
        prepared.provider.capabilities(model).max_n.max(1) as usize
    };
    let groups = (0..count)
        .collect::<Vec<_>>()
        .chunks(per_request)
        .map(|indices| {
            let mut p = template.clone();
            p.options.n = Some(indices.len() as u32);
            p.options.seed = template
                .options
                .seed
                .map(|s| s.wrapping_add(indices[0] as u64));
            Group {
                indices: indices.to_vec(),
                params: p,
            }
        })
        .collect();
    Ok((count, groups))
}

/// What the whole batch would cost by the estimate table, before anything is sent: every
/// item's estimate together, or `None` when any item's price is unknown (or the batch would
/// be refused anyway).
pub fn estimate_usd(params: &BatchParams, engine: &Engine) -> Option<f64> {
    let (_, groups) = plan(params, engine).ok()?;
    groups
        .iter()
        .map(|group| engine.estimate_usd(&group.params, false))
        .sum()
}

/// Runs a batch and returns every item's outcome, in input order, plus each item's images
/// (for inline previews); progress reports each item as it finishes.
pub async fn run(
    engine: Arc<Engine>,
    params: &BatchParams,
    call: &CallContext,
) -> (BatchOutput, Vec<Generation>) {
    let started = Instant::now();
    let (count, groups) = match plan(params, &engine) {
        Ok(plan) => plan,
        Err(error) => {
            let output = BatchOutput::failure(error, started.elapsed().as_millis() as u64);
            return (output, Vec::new());
        }
    };
    call.progress
        .phase(format!("{count} items in {} requests", groups.len()));
    let mut running: FuturesUnordered<_> = groups
        .into_iter()
        .map(|group| {
            let engine = engine.clone();
            // Items report only when they finish: sixteen interleaved phase streams say nothing.
            let item_call = CallContext {
                progress: Progress::none(),
                cancel: call.cancel.clone(),
                origin: call.origin.clone(),
            };
            async move {
                let outcome = engine.generate(&group.params, &item_call).await;
                (group, outcome)
            }
        })
        .collect();

    let mut results: Vec<Option<ItemResult>> = vec![None; count];
    let mut generations = Vec::new();
    let (mut done, mut failed) = (0, 0);
    let mut total_cost: Option<f64> = None;
    while let Some((group, outcome)) = running.next().await {
        let prompt = group.params.prompt.clone();
        match outcome {
            Ok(generation) => {
                let stored: Vec<StoredImage> =
                    generation.images.iter().map(|(s, _)| s.clone()).collect();
                // An item of its own keeps all its `n` images; items sharing a request get one each.
                let shares: Vec<Vec<StoredImage>> = if group.indices.len() == 1 {
                    vec![stored]
                } else {
                    let mut each: Vec<Vec<StoredImage>> =
                        stored.into_iter().map(|s| vec![s]).collect();
                    each.resize(group.indices.len(), Vec::new());
                    each
                };
                let share = group.indices.len() as f64;
                let cost = generation.cost.clone().map(|mut cost| {
                    if share > 1.0 {
                        cost.usd = cost.usd.map(|usd| usd / share);
                        cost.estimate_usd = cost.estimate_usd.map(|usd| usd / share);
                    }
                    cost
                });
                if let Some(usd) = generation.cost.as_ref().and_then(|c| c.usd) {
                    *total_cost.get_or_insert(0.0) += usd;
                }
                for (&index, images) in group.indices.iter().zip(shares) {
                    let error = images.is_empty().then(|| {
                        ToolError::new(
                            imagegen_providers::ErrorKind::BadResponse,
                            "the provider returned fewer images than asked for",
                        )
                    });
                    failed += usize::from(error.is_some());
                    results[index] = Some(ItemResult {
                        index,
                        prompt: prompt.clone(),
                        prompt_sent: generation.prompt_sent.clone(),
                        preset: generation.preset.clone(),
                        images,
                        error,
                        provider: Some(generation.provider.clone()),
                        model: Some(generation.model.clone()),
                        revised_prompt: generation.revised_prompt.clone(),
                        notes: generation.notes.clone(),
                        cached: generation.cached.clone(),
                        cost: cost.clone(),
                    });
                }
                generations.push((group.indices[0], generation));
            }
            Err(error) => {
                for &index in &group.indices {
                    failed += 1;
                    results[index] = Some(ItemResult {
                        index,
                        prompt: prompt.clone(),
                        prompt_sent: None,
                        preset: group.params.preset.clone(),
                        images: Vec::new(),
                        provider: error.provider.clone(),
                        model: error.model.clone(),
                        error: Some(error.clone()),
                        revised_prompt: None,
                        notes: Vec::new(),
                        cached: None,
                        cost: None,
                    });
                }
            }
        }
        done += group.indices.len();
        call.progress.phase(format!(
            "{done} of {count} items finished ({failed} failed)"
        ));
    }
    generations.sort_by_key(|(first, _)| *first);
    let results: Vec<ItemResult> = results.into_iter().flatten().collect();
    let output = BatchOutput {
        summary: BatchSummary {
            requested: count,
            succeeded: count - failed,
            failed,
            elapsed_ms: started.elapsed().as_millis() as u64,
            cost_usd: total_cost,
        },
        results,
        error: None,
    };
    (output, generations.into_iter().map(|(_, g)| g).collect())
}
