//! Per-caller limits (`[server.limits.per_caller]`, and the same keys on a
//! `[[server.auth.tokens]]` entry): how many image calls one caller may have running and
//! start per minute, checked before any provider is chosen.
//!
//! A refusal is the caller's own doing, so it never reaches the engine: no provider key cools
//! down over it and no fallback is tried. The state lives with the server, not the
//! configuration snapshot, so it survives reloads; the limits are read at each check, so a
//! reload that changes them applies to the next call.
//!
//! With `[cluster]`, `requests_per_minute` is counted in Redis for every replica together (a
//! sliding minute, see [`crate::cluster::rate`]); with Redis unreachable each replica counts
//! its own again (a steady refill here) and the status says so. `max_in_flight` is always
//! this replica's own: a call holds its place for up to minutes, and a place shared through
//! Redis would need leases renewed for that long and would stay taken, until it expired, by
//! the calls of a replica that died; each replica bounding its own calls bounds the load on it,
//! which is what the limit is for.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use imagegen_providers::ErrorKind;
use tokio::time::Instant;

use crate::{
    cluster::Cluster,
    config::{CallerLimitConfig, Config},
    error::ToolError,
};

/// The most callers whose state is kept; past it, callers whose state says nothing (no call
/// running, a full allowance) are forgotten first, then the longest idle.
pub const MAX_TRACKED_CALLERS: usize = 4096;

/// Where a caller's limit was set, so a refusal names the setting to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `[server.limits.per_caller]`.
    PerCaller,
    /// The caller's `[[server.auth.tokens]]` entry.
    Token,
}

/// The limits in force for one caller, each with where it was set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EffectiveLimits {
    max_in_flight: Option<(u32, Source)>,
    requests_per_minute: Option<(u32, Source)>,
}

impl EffectiveLimits {
    /// `caller`'s limits under `config`: its token entry's own values, else the per-caller ones.
    pub fn for_caller(config: &Config, caller: &str) -> Self {
        let shared = config.server.limits.per_caller;
        let token = config.server.auth.tokens.iter().find(|t| t.name == caller);
        let pick = |own: Option<u32>, shared: Option<u32>| {
            own.map(|v| (v, Source::Token))
                .or(shared.map(|v| (v, Source::PerCaller)))
        };
        Self {
            max_in_flight: pick(token.and_then(|t| t.max_in_flight), shared.max_in_flight),
            requests_per_minute: pick(
                token.and_then(|t| t.requests_per_minute),
                shared.requests_per_minute,
            ),
        }
    }

    /// Limits straight from a `[server.limits.per_caller]` table (tests, library use).
    pub fn shared(limits: CallerLimitConfig) -> Self {
        Self {
            max_in_flight: limits.max_in_flight.map(|v| (v, Source::PerCaller)),
            requests_per_minute: limits.requests_per_minute.map(|v| (v, Source::PerCaller)),
        }
    }

    fn is_unlimited(&self) -> bool {
        self.max_in_flight.is_none() && self.requests_per_minute.is_none()
    }
}

/// One caller's running calls and request allowance.
#[derive(Debug)]
struct CallerState {
    in_flight: u32,
    /// Requests that may start now; refills at `requests_per_minute / 60` a second.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
    /// The last admission or refusal, for evicting the longest idle.
    seen: Instant,
    /// The per-minute limit last applied to it (0: none), to judge it when evicting.
    per_minute: u32,
}

impl CallerState {
    /// Tops the allowance up for the time since the last refill, up to a minute's worth.
    fn refill(&mut self, per_minute: u32, now: Instant) {
        let capacity = f64::from(per_minute);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity / 60.0).min(capacity);
        self.refilled = now;
    }
}

/// Every caller's state, shared by every clone of the server and kept across reloads.
#[derive(Debug, Default)]
pub struct CallerLimiter {
    callers: Mutex<HashMap<String, CallerState>>,
}

/// Why a call was refused: which of the caller's own limits it hit, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The caller refused.
    pub caller: String,
    /// `max_in_flight` or `requests_per_minute`.
    pub limit: &'static str,
    /// The limit's value.
    pub value: u32,
    /// When a call may succeed again.
    pub retry_after: Duration,
    source: Source,
}

impl Refusal {
    /// The setting to change for more room, as written in the configuration.
    pub fn setting(&self) -> String {
        match self.source {
            Source::PerCaller => format!("server.limits.per_caller.{}", self.limit),
            Source::Token => format!("{} of [[server.auth.tokens]] `{}`", self.limit, self.caller),
        }
    }

    /// The tool error a refused call gets: `rate_limited`, with `retry_after_s`, saying
    /// that the caller's own limit was hit and no provider was asked.
    pub fn into_tool_error(self) -> ToolError {
        let what = match self.limit {
            "max_in_flight" => format!("{} image calls running at once", self.value),
            _ => format!("{} image calls per minute", self.value),
        };
        let mut error = ToolError::new(
            ErrorKind::RateLimited,
            format!(
                "caller `{}` reached its own limit of {what} ({}); this is this server's \
                 limit for the caller, not a provider's: no provider was called",
                self.caller,
                self.setting()
            ),
        );
        error.retryable = true;
        error.retry_after_s = Some(self.retry_after.as_secs_f64().ceil().max(1.0) as u64);
        error
    }
}

/// A call admitted under its caller's limits; dropping it (the call ended, however) frees
/// its place under `max_in_flight`.
#[derive(Debug)]
pub struct Admission {
    limiter: Option<(Arc<CallerLimiter>, String)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((limiter, caller)) = self.limiter.take() {
            let mut callers = limiter.lock();
            if let Some(state) = callers.get_mut(&caller) {
                state.in_flight = state.in_flight.saturating_sub(1);
            }
        }
    }
}

impl CallerLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallerState>> {
        self.callers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many callers have state now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    /// Admits one call of `caller` under `limits`, or says which limit it hit. Calls beyond
    /// `max_in_flight` take nothing from the per-minute allowance.
    pub fn admit(
        self: &Arc<Self>,
        caller: &str,
        limits: EffectiveLimits,
    ) -> Result<Admission, Refusal> {
        self.admit_counting(caller, limits, true)
    }

    /// [`CallerLimiter::admit`]; `requests_per_minute` is checked and counted only with
    /// `count_minute` (else it is counted elsewhere, and only remembered here).
    fn admit_counting(
        self: &Arc<Self>,
        caller: &str,
        limits: EffectiveLimits,
        count_minute: bool,
    ) -> Result<Admission, Refusal> {
        if limits.is_unlimited() {
            return Ok(Admission { limiter: None });
        }
        let now = Instant::now();
        let mut callers = self.lock();
        if !callers.contains_key(caller) && callers.len() >= MAX_TRACKED_CALLERS {
            evict(&mut callers);
        }
        let state = callers
            .entry(caller.to_string())
            .or_insert_with(|| CallerState {
                in_flight: 0,
                tokens: f64::from(limits.requests_per_minute.map_or(0, |(n, _)| n)),
                refilled: now,
                seen: now,
                per_minute: 0,
            });
        state.seen = now;
        let per_minute = limits.requests_per_minute.map_or(0, |(n, _)| n);
        if state.per_minute == 0 && per_minute > 0 {
            // A limit new to this caller (set by a reload, or counted here again while the
            // cluster is down) starts with a full allowance.
            state.tokens = f64::from(per_minute);
            state.refilled = now;
        }
        state.per_minute = per_minute;
        let refusal = |limit, (value, source): (u32, Source), retry_after| Refusal {
            caller: caller.to_string(),
            limit,
            value,
            retry_after,
            source,
        };
        if let Some(max) = limits.max_in_flight {
            if state.in_flight >= max.0 {
                // Calls end at no known time: a second is a polite pause, not a promise.
                return Err(refusal("max_in_flight", max, Duration::from_secs(1)));
            }
        }
        if let Some(rate) = limits.requests_per_minute.filter(|_| count_minute) {
            state.refill(rate.0, now);
            if state.tokens < 1.0 {
                let missing = 1.0 - state.tokens;
                let wait = Duration::from_secs_f64(missing * 60.0 / f64::from(rate.0));
                return Err(refusal("requests_per_minute", rate, wait));
            }
            state.tokens -= 1.0;
        }
        state.in_flight += 1;
        Ok(Admission {
            limiter: Some((self.clone(), caller.to_string())),
        })
    }
}

impl CallerLimiter {
    /// [`CallerLimiter::admit`], with `requests_per_minute` counted in `cluster`'s Redis for
    /// every replica when there is one, and here while it is unreachable.
    pub async fn admit_shared(
        self: &Arc<Self>,
        caller: &str,
        limits: EffectiveLimits,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<Admission, Refusal> {
        let (Some(cluster), Some(rate)) = (cluster, limits.requests_per_minute) else {
            return self.admit(caller, limits);
        };
        // The place in flight first: a call refused for it takes nothing from the minute.
        let admitted = self.admit_counting(caller, limits, false)?;
        match crate::cluster::rate::take(cluster, caller, rate.0).await {
            Ok(None) => Ok(admitted),
            Ok(Some(retry_after)) => Err(Refusal {
                caller: caller.to_string(),
                limit: "requests_per_minute",
                value: rate.0,
                retry_after,
                source: rate.1,
            }),
            Err(_) => {
                // Counted here until Redis is back (the cluster's status says it is down).
                drop(admitted);
                self.admit(caller, limits)
            }
        }
    }
}

/// Makes room for one more caller: first drops every caller whose state says nothing (no call
/// running and a full allowance), then, if none did, the longest idle caller with no call
/// running.
fn evict(callers: &mut HashMap<String, CallerState>) {
    let now = Instant::now();
    let full = |state: &mut CallerState| {
        let rate = state.per_minute;
        state.refill(rate, now);
        state.tokens >= f64::from(rate)
    };
    let before = callers.len();
    callers.retain(|_, state| state.in_flight > 0 || !full(state));
    if callers.len() < before {
        return;
    }
    let stalest = callers
        .iter()
        .filter(|(_, s)| s.in_flight == 0)
        .min_by_key(|(_, s)| s.seen)
        .map(|(name, _)| name.clone());
    if let Some(name) = stalest {
        callers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_in_flight: Option<u32>, requests_per_minute: Option<u32>) -> EffectiveLimits {
        EffectiveLimits::shared(CallerLimitConfig {
            max_in_flight,
            requests_per_minute,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_allowance_refills_steadily_and_says_when_to_come_back() {
        let limiter = Arc::new(CallerLimiter::default());
        let per_minute = limits(None, Some(3));
        for _ in 0..3 {
            drop(limiter.admit("alice", per_minute).unwrap());
        }
        let refused = limiter.admit("alice", per_minute).unwrap_err();
        assert_eq!(refused.limit, "requests_per_minute");
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(
            refused.setting(),
            "server.limits.per_caller.requests_per_minute"
        );
        // Another caller has an allowance of its own.
        drop(limiter.admit("bob", per_minute).unwrap());

        tokio::time::advance(Duration::from_secs(19)).await;
        let refused = limiter.admit("alice", per_minute).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(limiter.admit("alice", per_minute).unwrap());
        assert!(limiter.admit("alice", per_minute).is_err());

        // A long pause refills at most a minute's worth.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            drop(limiter.admit("alice", per_minute).unwrap());
        }
        assert!(limiter.admit("alice", per_minute).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_are_bounded_and_freed_when_they_end() {
        let limiter = Arc::new(CallerLimiter::default());
        let two = limits(Some(2), Some(10));
        let first = limiter.admit("alice", two).unwrap();
        let second = limiter.admit("alice", two).unwrap();
        let refused = limiter.admit("alice", two).unwrap_err();
        assert_eq!(
            (refused.limit, refused.value, refused.retry_after),
            ("max_in_flight", 2, Duration::from_secs(1))
        );
        drop(first);
        let third = limiter.admit("alice", two).unwrap();
        drop((second, third));
        // The refusal over calls in flight took nothing from the allowance: 10 - 3 are left.
        for _ in 0..7 {
            drop(limiter.admit("alice", two).unwrap());
        }
        assert_eq!(
            limiter.admit("alice", two).unwrap_err().limit,
            "requests_per_minute"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changed_limits_apply_at_the_next_call() {
        let limiter = Arc::new(CallerLimiter::default());
        for _ in 0..5 {
            drop(limiter.admit("alice", limits(None, Some(5))).unwrap());
        }
        assert!(limiter.admit("alice", limits(None, Some(5))).is_err());
        // Raised: the allowance grows at the new rate from here on.
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(limiter.admit("alice", limits(None, Some(60))).unwrap());
        // Lowered below what is left: the allowance is cut to the new size.
        tokio::time::advance(Duration::from_secs(60)).await;
        drop(limiter.admit("alice", limits(None, Some(1))).unwrap());
        assert!(limiter.admit("alice", limits(None, Some(1))).is_err());
        // Removed: no limit, and nothing is tracked for a call without one.
        let free = limiter.admit("carol", limits(None, None)).unwrap();
        assert!(free.limiter.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_callers_are_forgotten_so_the_map_stays_bounded() {
        let limiter = Arc::new(CallerLimiter::default());
        let per_minute = limits(Some(1), Some(60));
        let busy = limiter.admit("busy", per_minute).unwrap();
        for i in 0..MAX_TRACKED_CALLERS + 100 {
            drop(limiter.admit(&format!("caller-{i}"), per_minute).unwrap());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(limiter.tracked() <= MAX_TRACKED_CALLERS);
        // A caller with a call running is never forgotten: its limit still holds.
        assert_eq!(
            limiter.admit("busy", per_minute).unwrap_err().limit,
            "max_in_flight"
        );
        drop(busy);
        drop(limiter.admit("busy", per_minute).unwrap());
    }

    #[test]
    fn a_token_entry_wins_for_its_caller_and_refusals_name_the_setting() {
        let mut config = Config::default();
        config.server.limits.per_caller = CallerLimitConfig {
            max_in_flight: Some(4),
            requests_per_minute: Some(30),
        };
        config.server.auth.tokens = vec![crate::config::TokenConfig {
            name: "batch-bot".into(),
            requests_per_minute: Some(2),
            ..Default::default()
        }];
        let bot = EffectiveLimits::for_caller(&config, "batch-bot");
        assert_eq!(bot.requests_per_minute, Some((2, Source::Token)));
        assert_eq!(bot.max_in_flight, Some((4, Source::PerCaller)));
        let other = EffectiveLimits::for_caller(&config, "alice");
        assert_eq!(other.requests_per_minute, Some((30, Source::PerCaller)));

        let refusal = Refusal {
            caller: "batch-bot".into(),
            limit: "requests_per_minute",
            value: 2,
            retry_after: Duration::from_millis(200),
            source: Source::Token,
        };
        let error = refusal.into_tool_error();
        assert_eq!(error.kind.as_str(), "rate_limited");
        assert_eq!(error.retry_after_s, Some(1));
        assert!(error.retryable && error.provider.is_none());
        for says in [
            "caller `batch-bot`",
            "own limit",
            "requests_per_minute of [[server.auth.tokens]] `batch-bot`",
            "no provider was called",
        ] {
            assert!(error.message.contains(says), "{says}: {}", error.message);
        }
    }
}
