//! Routes: the providers a call may go to, in order, when it moves to the next, and what each
//! provider's recent calls say about its health.
//!
//! A call names a provider or a route (`[routes.NAME] providers = [...]`); a provider may name
//! its own `fallback` list, and a call may bring its own. The call goes to the first provider
//! that can do what was asked; on an outage, a rate limit, an exhausted quota, a refused key or
//! a missing model (after that provider's own retries and key moves) it moves on. Invalid
//! requests never move on (every provider would refuse them); content-policy refusals only
//! with `fallback_on_policy`. A provider whose keys all rest, or whose circuit is open, is
//! skipped at once unless it is the last one left.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagegen_providers::ErrorKind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ToolError, ToolErrorKind};

/// `[routes.NAME]`: providers tried in order under one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The providers, in the order they are tried.
    pub providers: Vec<String>,
    /// Whether a content-policy refusal moves the call to the next provider (another vendor's
    /// policy may allow what one refused).
    pub fallback_on_policy: bool,
}

/// One provider's part in a routed call, for the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RouteStep {
    /// The provider.
    pub provider: String,
    /// `served`, `failed` (it was called and the call moved on) or `skipped` (not called).
    pub outcome: String,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RouteStep {
    /// `provider` was not called, because of `reason`.
    pub fn skipped(provider: &str, reason: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            outcome: "skipped".into(),
            reason: Some(reason.into()),
        }
    }

    /// `provider` was called and failed with `error`; the call moved on.
    pub fn failed(provider: &str, error: &ToolError) -> Self {
        Self {
            provider: provider.into(),
            outcome: "failed".into(),
            reason: Some(format!("{}: {}", error.kind.as_str(), error.message)),
        }
    }

    /// `provider` served the call.
    pub fn served(provider: &str) -> Self {
        Self {
            provider: provider.into(),
            outcome: "served".into(),
            reason: None,
        }
    }

    /// The step as a sentence for the result's notes.
    pub fn note(&self) -> Option<String> {
        let reason = self.reason.as_deref()?;
        Some(match self.outcome.as_str() {
            "skipped" => format!("provider `{}` was skipped: {reason}", self.provider),
            _ => format!(
                "provider `{}` failed ({reason}); the call moved to the next provider",
                self.provider
            ),
        })
    }
}

/// Whether a failure of one provider moves the call to the next.
pub fn falls_over(error: &ToolError, on_policy: bool) -> bool {
    match error.kind {
        ToolErrorKind::Provider(kind) => match kind {
            ErrorKind::ContentPolicy => on_policy,
            ErrorKind::InvalidRequest | ErrorKind::Unsupported | ErrorKind::Cancelled => false,
            _ => true,
        },
        // Saving failed after the image was made and paid for: another provider would only
        // pay again to fail the same way.
        _ => false,
    }
}

/// Whether a failure says something about the provider's health (an outage, not a refusal
/// of this one request).
fn counts_against(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::UpstreamUnavailable
            | ErrorKind::Network
            | ErrorKind::Timeout
            | ErrorKind::BadResponse
            | ErrorKind::RateLimited
            | ErrorKind::QuotaExhausted
            | ErrorKind::Auth
    )
}

/// When a provider's circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Outcomes remembered per provider.
    pub window: usize,
    /// The fewest outcomes in the window before the circuit may open.
    pub min_calls: usize,
    /// The share of failures in the window that opens it.
    pub failure_ratio: f64,
    /// How long it stays open before one probe call is let through.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window: 10,
            min_calls: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    outcomes: VecDeque<bool>,
    open_until: Option<Instant>,
    probing: bool,
    last_error: Option<String>,
}

/// Every provider's recent outcomes, shared by every engine of this process (so a reload does
/// not forget an outage).
#[derive(Debug, Default)]
pub struct Health {
    settings: BreakerSettings,
    records: Mutex<BTreeMap<String, Record>>,
}

/// The health of one provider as `list_providers` and `imagegen://status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthStatus {
    /// `healthy`, `degraded` (recent failures, circuit closed), `open` (skipped while others
    /// remain) or `half_open` (the next call is a probe).
    pub state: String,
    /// Recent calls remembered, and how many of them failed.
    pub recent_calls: usize,
    /// How many of them failed.
    pub recent_failures: usize,
    /// Seconds until an open circuit lets a probe through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for_s: Option<u64>,
    /// The last failure, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Shared [`Health`].
pub type SharedHealth = Arc<Health>;

impl Health {
    /// Health tracking with other breaker settings.
    pub fn with_settings(settings: BreakerSettings) -> Self {
        Self {
            settings,
            records: Mutex::default(),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why `provider` should be skipped now, if its circuit is open; a circuit whose time is
    /// up lets exactly one call through as a probe.
    pub fn skip_reason(&self, provider: &str) -> Option<String> {
        let mut records = self.records();
        let record = records.get_mut(provider)?;
        let until = record.open_until?;
        let now = Instant::now();
        if now < until {
            return Some(format!(
                "its recent calls mostly failed (circuit open for {} s more{})",
                (until - now).as_secs().max(1),
                record
                    .last_error
                    .as_deref()
                    .map(|e| format!("; last: {e}"))
                    .unwrap_or_default()
            ));
        }
        if record.probing {
            return Some("a probe call is testing whether it recovered".into());
        }
        record.probing = true;
        None
    }

    /// Records a call's outcome: a success closes the circuit, a failure that says something
    /// about the provider may open it.
    pub fn record(&self, provider: &str, outcome: Result<(), &ToolError>) {
        let failed = match outcome {
            Ok(()) => false,
            Err(e) => match e.kind {
                ToolErrorKind::Provider(kind) if counts_against(kind) => true,
                // A refusal of this request says nothing about the provider; a probe that was
                // refused (a budget, say) never reached it, so the next call probes instead.
                _ => {
                    if let Some(record) = self.records().get_mut(provider) {
                        record.probing = false;
                    }
                    return;
                }
            },
        };
        let s = self.settings;
        let mut records = self.records();
        let record = records.entry(provider.to_string()).or_default();
        record.outcomes.push_back(failed);
        while record.outcomes.len() > s.window {
            record.outcomes.pop_front();
        }
        let was_probe = std::mem::take(&mut record.probing);
        if let Err(e) = outcome {
            record.last_error = Some(format!("{}: {}", e.kind.as_str(), e.message));
        }
        if !failed {
            if was_probe || record.open_until.is_some() {
                record.outcomes.clear();
            }
            record.open_until = None;
            return;
        }
        let failures = record.outcomes.iter().filter(|f| **f).count();
        let total = record.outcomes.len();
        if was_probe || (total >= s.min_calls && failures as f64 >= s.failure_ratio * total as f64)
        {
            record.open_until = Some(Instant::now() + s.open_for);
        }
    }

    /// The health of `provider` now.
    pub fn status(&self, provider: &str) -> HealthStatus {
        let records = self.records();
        let Some(record) = records.get(provider) else {
            return HealthStatus {
                state: "healthy".into(),
                recent_calls: 0,
                recent_failures: 0,
                open_for_s: None,
                last_error: None,
            };
        };
        let failures = record.outcomes.iter().filter(|f| **f).count();
        let now = Instant::now();
        let (state, open_for_s) = match record.open_until {
            Some(until) if until > now => ("open", Some((until - now).as_secs().max(1))),
            Some(_) => ("half_open", None),
            None if failures > 0 => ("degraded", None),
            None => ("healthy", None),
        };
        HealthStatus {
            state: state.into(),
            recent_calls: record.outcomes.len(),
            recent_failures: failures,
            open_for_s,
            last_error: record.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind) -> ToolError {
        ToolError::from_provider(
            imagegen_providers::ProviderError::new(kind, "upstream said no"),
            Some("a"),
            None,
        )
    }

    #[test]
    fn outages_fall_over_and_refusals_of_the_request_do_not() {
        for kind in [
            ErrorKind::UpstreamUnavailable,
            ErrorKind::RateLimited,
            ErrorKind::QuotaExhausted,
            ErrorKind::Auth,
            ErrorKind::NotFound,
            ErrorKind::Network,
            ErrorKind::Timeout,
        ] {
            assert!(falls_over(&error(kind), false), "{kind:?}");
        }
        for kind in [ErrorKind::InvalidRequest, ErrorKind::Cancelled] {
            assert!(!falls_over(&error(kind), true), "{kind:?}");
        }
        assert!(!falls_over(&error(ErrorKind::ContentPolicy), false));
        assert!(falls_over(&error(ErrorKind::ContentPolicy), true));
        assert!(!falls_over(&ToolError::storage("disk full"), true));
    }

    #[test]
    fn a_circuit_opens_on_mostly_failures_lets_one_probe_through_and_closes_on_success() {
        let health = Health::with_settings(BreakerSettings {
            open_for: Duration::ZERO,
            ..BreakerSettings::default()
        });
        let outage = error(ErrorKind::UpstreamUnavailable);
        health.record("a", Ok(()));
        health.record("a", Err(&outage));
        health.record("a", Err(&outage));
        assert_eq!(health.status("a").state, "degraded");
        assert_eq!(health.skip_reason("a"), None);
        // A refused request does not count.
        health.record("a", Err(&error(ErrorKind::InvalidRequest)));
        assert_eq!(health.status("a").recent_calls, 3);
        health.record("a", Err(&outage));
        // Open (for zero seconds here): one probe goes through, the next call is skipped.
        assert_eq!(health.status("a").state, "half_open");
        assert_eq!(health.skip_reason("a"), None);
        assert!(health.skip_reason("a").unwrap().contains("probe"));
        // The probe fails: open again; then one succeeds: closed, history cleared.
        health.record("a", Err(&outage));
        assert_eq!(health.skip_reason("a"), None);
        health.record("a", Ok(()));
        let status = health.status("a");
        assert_eq!((status.state.as_str(), status.recent_calls), ("healthy", 0));
        assert_eq!(health.status("never-called").state, "healthy");
    }

    #[test]
    fn an_open_circuit_says_why_and_for_how_long() {
        let health = Health::default();
        for _ in 0..4 {
            health.record("a", Err(&error(ErrorKind::RateLimited)));
        }
        let reason = health.skip_reason("a").unwrap();
        assert!(
            reason.contains("circuit open for") && reason.contains("rate_limited"),
            "{reason}"
        );
        let status = health.status("a");
        assert_eq!(status.state, "open");
        assert!(status.open_for_s.unwrap() <= 30);
    }
}
