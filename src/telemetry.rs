//! The Prometheus metrics of `serve --http`: their names, the recorder, and the gauges that
//! are read from the live state at each scrape (provider health, key states, calls in flight).
//!
//! Label values come from the configuration (provider, caller and route names), from fixed
//! sets (tools, outcomes, states), or are folded to `other` (models nobody configured), so a
//! caller cannot grow the number of series. Caller values are token names or OAuth subjects (at
//! most [`MAX_CALLER_LABELS`] of them), never tokens.

use std::{collections::BTreeSet, sync::Mutex};

use imagegen_providers::ProviderEvent;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{live::Live, server::status_output};

/// Counter: finished tool calls, by `tool`, `provider`, `model`, `outcome` and `caller`.
pub const TOOL_CALLS: &str = "imagegen_tool_calls_total";
/// Gauge: tool calls running now.
pub const TOOL_CALLS_IN_FLIGHT: &str = "imagegen_tool_calls_in_flight";
/// Counter: bytes of tool results' content (text and base64 images), by `tool`.
pub const TOOL_RESULT_BYTES: &str = "imagegen_tool_result_bytes_total";
/// Histogram: one upstream call (retries and key moves included), seconds, by `provider`,
/// `model` and `outcome`.
pub const UPSTREAM_SECONDS: &str = "imagegen_upstream_duration_seconds";
/// Counter: upstream retries, by `provider`.
pub const UPSTREAM_RETRIES: &str = "imagegen_upstream_retries_total";
/// Counter: API keys put to rest (rate limited), by `provider`.
pub const KEY_COOLDOWNS: &str = "imagegen_key_cooldowns_total";
/// Counter: API keys disabled (rejected, no quota), by `provider` and `kind`.
pub const KEY_DISABLES: &str = "imagegen_key_disables_total";
/// Gauge: API keys per `provider` in each `state` (`active`, `cooling_down`, `disabled`).
pub const KEYS: &str = "imagegen_provider_keys";
/// Gauge: 1 for each provider's circuit `state` (`healthy`, `degraded`, `open`, `half_open`), 0
/// for the others.
pub const PROVIDER_HEALTH: &str = "imagegen_provider_health";
/// Gauge: upstream calls in flight, all providers together.
pub const UPSTREAM_IN_FLIGHT: &str = "imagegen_upstream_in_flight";
/// Counter: bytes of images generated and saved, by `provider` and `model`.
pub const IMAGE_BYTES: &str = "imagegen_image_bytes_total";
/// Counter: cache lookups of calls that use the cache, by `provider` and `outcome` (`hit`, `miss`).
pub const CACHE_LOOKUPS: &str = "imagegen_cache_lookups_total";
/// Counter: what calls cost, in millionths of a US dollar, by `provider`, `model` and `basis`
/// (`usage`, `estimate`); unpriced calls are not counted.
pub const COST_MICRODOLLARS: &str = "imagegen_cost_microdollars_total";
/// Counter: configuration reloads, by `outcome` (`published`, `failed`).
pub const RELOADS: &str = "imagegen_config_reloads_total";

/// The circuit states, in the order the gauge lists them.
const HEALTH_STATES: [&str; 4] = ["healthy", "degraded", "open", "half_open"];
/// The key states.
const KEY_STATES: [&str; 3] = ["active", "cooling_down", "disabled"];

/// Upstream latency buckets, seconds: image calls take from a fraction of a second (the mock,
/// a cache) to minutes (large, high-quality images, queued jobs), up to the 300 s a call may
/// run by default.
pub const UPSTREAM_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 300.0,
];

/// Installs the process's recorder; `None` (with a warning) when one is installed already.
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(UPSTREAM_SECONDS.into()), &UPSTREAM_BUCKETS);
    let handle = builder
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| tracing::warn!("GET /metrics is off: {e}"))
        .ok()?;
    describe();
    Some(handle)
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        TOOL_CALLS,
        "Finished tool calls by tool, provider, model, outcome (ok or the error kind) and caller"
    );
    describe_gauge!(TOOL_CALLS_IN_FLIGHT, "Tool calls running now");
    describe_counter!(
        TOOL_RESULT_BYTES,
        Unit::Bytes,
        "Bytes of tool result content (text and base64 images) by tool"
    );
    describe_histogram!(
        UPSTREAM_SECONDS,
        Unit::Seconds,
        "Upstream call duration (retries included) by provider, model and outcome"
    );
    describe_counter!(UPSTREAM_RETRIES, "Upstream retries by provider");
    describe_counter!(
        KEY_COOLDOWNS,
        "API keys put to rest after a rate limit, by provider"
    );
    describe_counter!(
        KEY_DISABLES,
        "API keys disabled (rejected, out of quota) by provider and error kind"
    );
    describe_gauge!(KEYS, "API keys by provider and state");
    describe_gauge!(
        PROVIDER_HEALTH,
        "1 for the provider's current circuit state, 0 for the others"
    );
    describe_gauge!(
        UPSTREAM_IN_FLIGHT,
        "Upstream calls in flight, all providers"
    );
    describe_counter!(
        IMAGE_BYTES,
        Unit::Bytes,
        "Bytes of images generated and saved, by provider and model"
    );
    describe_counter!(
        RELOADS,
        "Configuration reloads by outcome (published, failed)"
    );
    describe_counter!(
        COST_MICRODOLLARS,
        "What calls cost, in millionths of a US dollar, by provider, model and basis (usage, estimate)"
    );
}

/// Counts what a provider event says about retries and keys.
pub fn count_event(provider: &str, event: &ProviderEvent) {
    match event {
        // Attempt 0 is a wait for a resting key, not a new request.
        ProviderEvent::Retrying { attempt, .. } if *attempt > 0 => {
            metrics::counter!(UPSTREAM_RETRIES, "provider" => provider.to_string()).increment(1);
        }
        ProviderEvent::KeyRested {
            disabled: false, ..
        } => {
            metrics::counter!(KEY_COOLDOWNS, "provider" => provider.to_string()).increment(1);
        }
        ProviderEvent::KeyRested {
            disabled: true,
            kind,
            ..
        } => {
            metrics::counter!(
                KEY_DISABLES,
                "provider" => provider.to_string(),
                "kind" => kind.as_str()
            )
            .increment(1);
        }
        _ => {}
    }
}

/// Distinct caller labels kept before further callers are counted as `other`: token names are
/// bounded by the config, but OAuth subjects are whatever the authorization server issues.
const MAX_CALLER_LABELS: usize = 200;

/// The `caller` label for `caller`: itself while fewer than [`MAX_CALLER_LABELS`] callers have
/// been seen, else `other`, so a stream of new OAuth subjects cannot grow the series without end.
pub fn caller_label(caller: &str) -> String {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(caller) || seen.len() < MAX_CALLER_LABELS {
        seen.insert(caller.to_string());
        caller.to_string()
    } else {
        "other".to_string()
    }
}

/// Sets the gauges that describe the live state, just before a scrape renders them.
pub fn refresh(live: &Live, tool_calls_in_flight: usize) {
    // Providers a reload removed: their gauges say nothing is there rather than their last state.
    static SHOWN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let status = status_output(live);
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    for gone in shown
        .iter()
        .filter(|name| !status.providers.iter().any(|p| &p.name == *name))
    {
        for state in HEALTH_STATES {
            metrics::gauge!(PROVIDER_HEALTH, "provider" => gone.clone(), "state" => state).set(0.0);
        }
        for state in KEY_STATES {
            metrics::gauge!(KEYS, "provider" => gone.clone(), "state" => state).set(0.0);
        }
    }
    *shown = status.providers.iter().map(|p| p.name.clone()).collect();
    drop(shown);
    metrics::gauge!(TOOL_CALLS_IN_FLIGHT).set(tool_calls_in_flight as f64);
    metrics::gauge!(UPSTREAM_IN_FLIGHT).set(status.in_flight as f64);
    for provider in &status.providers {
        for state in HEALTH_STATES {
            let on = f64::from(u8::from(provider.health.state == state));
            metrics::gauge!(PROVIDER_HEALTH, "provider" => provider.name.clone(), "state" => state)
                .set(on);
        }
        if provider.keys.is_empty() {
            continue;
        }
        for state in KEY_STATES {
            let count = provider.keys.iter().filter(|k| k.state == state).count();
            metrics::gauge!(KEYS, "provider" => provider.name.clone(), "state" => state)
                .set(count as f64);
        }
    }
}
