//! A pool of API keys for one provider: round-robin over usable keys, cooldown on rate limits,
//! disable on rejection, and state carried across configuration reloads.
//!
//! A key's identity is the SHA-256 of the key itself: display fingerprints such as `sk-…abcd`
//! can collide, and the hash lets a reload recognise a key it already knows.
//!
//! What is known about the keys (cooldowns, disables, per-minute budgets, the round-robin
//! position) lives behind [`KeyStateStore`]; [`MemoryKeyStore`], this process's memory, is
//! the one store today, and a store shared between processes can replace it.
//!
//! A pool tells a [`KeyEvents`] observer, when one is set, of every change of a key's health
//! (cooled down, disabled, healthy again), and takes such changes from elsewhere through
//! [`KeyPool::apply`] without telling the observer: the server shares them between replicas
//! that way, and this crate knows nothing of how.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{secret::fingerprint, ErrorKind, ProviderError};

/// The longest cooldown given without a server hint.
const MAX_COOLDOWN: Duration = Duration::from_secs(60);

/// The longest rest any hint can give a key. Providers clamp a server's hint to their
/// `retry_after_cap` before it gets here; this bound keeps an unclamped one from overflowing
/// the clock or locking a key out until a restart.
const MAX_HINTED_COOLDOWN: Duration = Duration::from_secs(24 * 60 * 60);

/// One key of a pool. Its `Debug` shows only the fingerprint.
pub struct PoolKey {
    secret: SecretString,
    id: [u8; 32],
    fingerprint: String,
    source: String,
}

impl PoolKey {
    /// The key itself, for the one place a request header is built.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// A safe hint of the key, such as `sk-…abcd`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where the key came from (a file, an environment variable, ...).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key's identity (the SHA-256 of the key).
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolKey")
            .field("fingerprint", &self.fingerprint)
            .field("source", &self.source)
            .finish()
    }
}

/// A key's identity: the SHA-256 of the key itself.
pub type KeyId = [u8; 32];

/// What is known about one key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KeyHealth {
    /// Usable.
    Active,
    /// Rate limited: usable again at `until`; `strikes` consecutive limits so far.
    CoolingDown {
        /// When the key is usable again.
        until: Instant,
        /// Consecutive rate limits, for the next cooldown's length.
        strikes: u32,
    },
    /// Out of rotation (rejected, no quota) since `since`, for `reason`.
    Disabled {
        /// What the failure was.
        kind: ErrorKind,
        /// Why, for people.
        reason: String,
        /// When it was disabled.
        since: Instant,
    },
}

/// The state of a pool's keys, as a [`KeyStateStore`] keeps it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KeyStates {
    /// Each key's health; a key not listed is active.
    pub health: HashMap<KeyId, KeyHealth>,
    /// When each key was handed out within the last minute, oldest first (with a
    /// `requests_per_minute` limit only).
    pub sent: HashMap<KeyId, VecDeque<Instant>>,
    /// Where the round robin goes next.
    pub next: usize,
}

/// Where a pool keeps what it knows about its keys: memory today, a store shared between
/// processes (Redis, say) later.
pub trait KeyStateStore: Send + Sync + fmt::Debug {
    /// Runs `f` on the state as one atomic step (no other update sees a half-done one).
    /// `f` must be run exactly once.
    fn update(&self, f: &mut dyn FnMut(&mut KeyStates));
}

/// The in-memory [`KeyStateStore`]: one mutex around [`KeyStates`].
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    state: Mutex<KeyStates>,
}

impl KeyStateStore for MemoryKeyStore {
    fn update(&self, f: &mut dyn FnMut(&mut KeyStates)) {
        // A panic elsewhere must not take key selection down with it; the state stays valid.
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A change of one key's health: what a pool tells its [`KeyEvents`] observer, and what
/// [`KeyPool::apply`] takes from elsewhere.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KeyChange {
    /// Rate limited: resting for `rest` from now, after `strikes` consecutive limits.
    CooledDown {
        /// How long the key rests from now.
        rest: Duration,
        /// Consecutive rate limits so far.
        strikes: u32,
    },
    /// Out of rotation for `rest` from now (the recheck interval), for `reason`.
    Disabled {
        /// What the failure was.
        kind: ErrorKind,
        /// Why, for people.
        reason: String,
        /// How long until the key is tried again.
        rest: Duration,
    },
    /// Healthy again: a call with it succeeded after a cooldown or a disable.
    Recovered,
}

/// Told of every change of a pool's keys' health, to share it (with other replicas, say).
pub trait KeyEvents: Send + Sync + fmt::Debug {
    /// The key `id` (shown as `fingerprint`) went through `change`. Called outside the pool's
    /// lock, on the caller's thread: it must not block.
    fn key_changed(&self, id: &KeyId, fingerprint: &str, change: &KeyChange);
}

/// The window `requests_per_minute` counts over.
const MINUTE: Duration = Duration::from_secs(60);

/// The keys of one provider and what is known about each.
pub struct KeyPool {
    keys: Vec<Arc<PoolKey>>,
    store: Arc<dyn KeyStateStore>,
    recheck: Duration,
    requests_per_minute: Option<u32>,
    /// Told of every health change made here (not of those [`KeyPool::apply`] makes).
    events: RwLock<Option<Arc<dyn KeyEvents>>>,
}

impl fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.fingerprint))
            .finish()
    }
}

/// A key's state as shown in status views: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyStatus {
    /// A safe hint of the key, such as `sk-…abcd`.
    pub fingerprint: String,
    /// Where the key came from.
    pub source: String,
    /// `active`, `cooling_down` or `disabled`.
    pub state: &'static str,
    /// Seconds until a cooling-down key is usable again, or a disabled key is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usable_in_s: Option<u64>,
    /// Why the key is disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl KeyPool {
    /// A pool of `keys` (each with its source), de-duplicated by content; disabled keys are
    /// tried again after `recheck`.
    pub fn new(keys: impl IntoIterator<Item = (SecretString, String)>, recheck: Duration) -> Self {
        let mut seen = Vec::new();
        let mut pool = Vec::new();
        for (secret, source) in keys {
            let id: [u8; 32] = Sha256::digest(secret.expose_secret().as_bytes()).into();
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            pool.push(Arc::new(PoolKey {
                fingerprint: fingerprint(secret.expose_secret()),
                secret,
                id,
                source,
            }));
        }
        Self {
            keys: pool,
            store: Arc::new(MemoryKeyStore::default()),
            recheck,
            requests_per_minute: None,
            events: RwLock::new(None),
        }
    }

    /// Hands each key out at most `limit` times in any 60 s, below the provider's own limit,
    /// so calls wait their turn here instead of collecting 429s.
    pub fn with_requests_per_minute(mut self, limit: Option<u32>) -> Self {
        self.requests_per_minute = limit.filter(|&n| n > 0);
        self
    }

    /// Keeps the keys' state in `store` instead of this process's memory.
    pub fn with_store(mut self, store: Arc<dyn KeyStateStore>) -> Self {
        self.store = store;
        self
    }

    /// Tells `events` (none: nobody) of every health change this pool makes from now on.
    pub fn set_events(&self, events: Option<Arc<dyn KeyEvents>>) {
        *self.events.write().unwrap_or_else(|e| e.into_inner()) = events;
    }

    /// Tells the observer, if any, that `key` went through `change`.
    fn tell(&self, key: &PoolKey, change: KeyChange) {
        let events = self
            .events
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(events) = events {
            events.key_changed(&key.id, &key.fingerprint, &change);
        }
    }

    /// The identity of each key, in pool order.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|k| &k.id)
    }

    /// Applies a `change` learnt from elsewhere to the key `id`, without telling the observer
    /// (so a change shared between processes never echoes back); `false` when the pool has no
    /// such key. A longer rest or a disable already known here is kept.
    pub fn apply(&self, id: &KeyId, change: &KeyChange) -> bool {
        if !self.keys.iter().any(|k| k.id == *id) {
            return false;
        }
        let now = Instant::now();
        self.with_state(|state| {
            let current = state.health.get(id);
            let next = match change {
                KeyChange::CooledDown { rest, strikes } => {
                    let until = now
                        .checked_add((*rest).min(MAX_HINTED_COOLDOWN))
                        .unwrap_or(now);
                    match current {
                        Some(KeyHealth::Disabled { .. }) => return,
                        Some(KeyHealth::CoolingDown {
                            until: mine,
                            strikes: my_strikes,
                        }) if *mine >= until => KeyHealth::CoolingDown {
                            until: *mine,
                            strikes: (*my_strikes).max(*strikes),
                        },
                        _ => KeyHealth::CoolingDown {
                            until,
                            strikes: (*strikes).max(1),
                        },
                    }
                }
                KeyChange::Disabled { kind, reason, rest } => {
                    // Tried again when the rest is over, as where it was disabled.
                    let gone = self.recheck.saturating_sub(*rest);
                    KeyHealth::Disabled {
                        kind: *kind,
                        reason: reason.clone(),
                        since: now.checked_sub(gone).unwrap_or(now),
                    }
                }
                KeyChange::Recovered => match current {
                    None | Some(KeyHealth::Active) => return,
                    _ => KeyHealth::Active,
                },
            };
            state.health.insert(*id, next);
        });
        true
    }

    /// How long until `key` may be handed out again under `requests_per_minute` (zero: now).
    fn budget_wait(&self, state: &mut KeyStates, key: &PoolKey, now: Instant) -> Duration {
        let Some(limit) = self.requests_per_minute else {
            return Duration::ZERO;
        };
        let Some(sent) = state.sent.get_mut(&key.id) else {
            return Duration::ZERO;
        };
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            sent.pop_front();
        }
        match sent.front() {
            Some(oldest) if sent.len() >= limit as usize => {
                (*oldest + MINUTE).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    /// A pool with no keys: requests go out without credentials.
    pub fn empty() -> Self {
        Self::new([], Duration::from_secs(600))
    }

    /// Whether the pool has no keys at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Each key and its fingerprint, for scrubbing echoes of them; never leaves the crate.
    pub(crate) fn secrets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys
            .iter()
            .map(|k| (k.secret.expose_secret(), k.fingerprint.as_str()))
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Runs `f` on the keys' state as one step of the store.
    fn with_state<R>(&self, f: impl FnOnce(&mut KeyStates) -> R) -> R {
        let mut f = Some(f);
        let mut out = None;
        self.store.update(&mut |state| {
            if let Some(f) = f.take() {
                out = Some(f(state));
            }
        });
        match (out, f) {
            (Some(out), _) => out,
            // A store that broke its contract: act as if nothing were known about the keys.
            (None, Some(f)) => f(&mut KeyStates::default()),
            (None, None) => unreachable!("the closure ran but gave nothing back"),
        }
    }

    fn usable(&self, health: Option<&KeyHealth>, now: Instant) -> bool {
        match health {
            None | Some(KeyHealth::Active) => true,
            Some(KeyHealth::CoolingDown { until, .. }) => *until <= now,
            Some(KeyHealth::Disabled { since, .. }) => now.duration_since(*since) >= self.recheck,
        }
    }

    /// The next usable key round-robin, skipping `tried` (keys this call already used).
    ///
    /// With no usable key it fails at once, saying when one will be usable.
    pub fn pick(&self, tried: &[&PoolKey]) -> Result<Arc<PoolKey>, ProviderError> {
        let now = Instant::now();
        self.with_state(|state| {
            let n = self.keys.len();
            for step in 0..n {
                let i = (state.next + step) % n;
                let key = &self.keys[i];
                if tried.iter().any(|t| t.id == key.id)
                    || !self.usable(state.health.get(&key.id), now)
                    || !self.budget_wait(state, key, now).is_zero()
                {
                    continue;
                }
                state.next = (i + 1) % n;
                if self.requests_per_minute.is_some() {
                    state.sent.entry(key.id).or_default().push_back(now);
                }
                return Ok(key.clone());
            }
            Err(self.exhausted(state, now))
        })
    }

    fn exhausted(&self, state: &mut KeyStates, now: Instant) -> ProviderError {
        let mut soonest: Option<Duration> = None;
        let mut parts = Vec::new();
        let mut all_disabled = true;
        let mut disabled_kind = ErrorKind::Auth;
        for key in &self.keys {
            let (wait, what) = match state.health.get(&key.id) {
                Some(KeyHealth::CoolingDown { until, .. }) => {
                    all_disabled = false;
                    let wait = until.saturating_duration_since(now);
                    (
                        wait,
                        format!("cooling down for {} s", wait.as_secs_f64().ceil()),
                    )
                }
                Some(KeyHealth::Disabled {
                    kind,
                    reason,
                    since,
                }) => {
                    disabled_kind = *kind;
                    let wait = self.recheck.saturating_sub(now.duration_since(*since));
                    (wait, format!("disabled ({reason})"))
                }
                _ => {
                    all_disabled = false;
                    match self.budget_wait(state, key, now) {
                        wait if wait.is_zero() => (wait, "already tried by this call".into()),
                        wait => (
                            wait,
                            format!(
                                "at its requests_per_minute ({}) for {} s",
                                self.requests_per_minute.unwrap_or_default(),
                                wait.as_secs_f64().ceil()
                            ),
                        ),
                    }
                }
            };
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            parts.push(format!("{} {what}", key.fingerprint));
        }
        let wait = soonest.unwrap_or_default();
        let (kind, hint) = if all_disabled {
            (
                disabled_kind,
                format!(
                    "fix or rotate the keys in the configuration; disabled keys are tried again in {} s",
                    wait.as_secs_f64().ceil()
                ),
            )
        } else {
            (
                ErrorKind::RateLimited,
                format!("a key is usable again in {} s", wait.as_secs_f64().ceil()),
            )
        };
        let message = if self.keys.is_empty() {
            "no API key is configured".to_string()
        } else {
            format!("no usable API key: {}; {hint}", parts.join(", "))
        };
        ProviderError::new(kind, message)
            .with_retryable(!all_disabled)
            .with_retry_after((!all_disabled).then_some(wait))
    }

    /// Rests `key` after a rate limit: for `retry_after` when the server said, else
    /// exponentially longer on each consecutive limit (1 s, 2 s, 4 s, ... up to 60 s).
    pub fn cool_down(&self, key: &PoolKey, retry_after: Option<Duration>) {
        self.cool_down_at_most(key, retry_after, MAX_HINTED_COOLDOWN)
    }

    /// [`KeyPool::cool_down`], never resting the key longer than `cap` (the provider's
    /// `retry_after_cap`): a call that would wait longer fails at once, so a longer rest would
    /// lock the key out of calls that the cap promises to serve.
    pub fn cool_down_at_most(&self, key: &PoolKey, retry_after: Option<Duration>, cap: Duration) {
        let now = Instant::now();
        let change = self.with_state(|state| {
            let strikes = match state.health.get(&key.id) {
                Some(KeyHealth::CoolingDown { strikes, .. }) => strikes + 1,
                _ => 1,
            };
            let wait = retry_after
                .unwrap_or_else(|| Duration::from_secs(1 << (strikes - 1).min(6)).min(MAX_COOLDOWN))
                .min(MAX_HINTED_COOLDOWN)
                .min(cap);
            state.health.insert(
                key.id,
                KeyHealth::CoolingDown {
                    until: now.checked_add(wait).unwrap_or(now),
                    strikes,
                },
            );
            (wait, strikes)
        });
        let (rest, strikes) = change;
        self.tell(key, KeyChange::CooledDown { rest, strikes });
    }

    /// Takes `key` out of rotation (rejected, no quota, no billing) until a reload changes
    /// the configuration or the recheck interval passes; `kind` is what the failure was.
    pub fn disable(&self, key: &PoolKey, kind: ErrorKind, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(key = %key.fingerprint, source = %key.source, %reason, "API key disabled");
        let since = Instant::now();
        self.with_state(|state| {
            state.health.insert(
                key.id,
                KeyHealth::Disabled {
                    kind,
                    reason: reason.clone(),
                    since,
                },
            )
        });
        let rest = self.recheck;
        self.tell(key, KeyChange::Disabled { kind, reason, rest });
    }

    /// Marks `key` healthy after a successful call.
    pub fn succeeded(&self, key: &PoolKey) {
        let changed = self.with_state(|state| {
            let changed = state
                .health
                .get(&key.id)
                .is_some_and(|h| *h != KeyHealth::Active);
            if changed {
                state.health.insert(key.id, KeyHealth::Active);
            }
            changed
        });
        // Only a change is told: a success on a healthy key is the hot path.
        if changed {
            self.tell(key, KeyChange::Recovered);
        }
    }

    /// Copies what `old` knows about keys this pool still has: cooldowns always, disabled
    /// states only when the configuration's content did not change, and the round-robin position.
    pub fn carry_over(&self, old: &KeyPool, config_changed: bool) {
        let old_state = old.with_state(|state| state.clone());
        self.with_state(|state| self.carry_over_into(state, &old_state, config_changed));
    }

    fn carry_over_into(&self, state: &mut KeyStates, old_state: &KeyStates, config_changed: bool) {
        for key in &self.keys {
            match old_state.health.get(&key.id) {
                Some(h @ KeyHealth::CoolingDown { .. }) => {
                    state.health.insert(key.id, h.clone());
                }
                Some(h @ KeyHealth::Disabled { .. }) if !config_changed => {
                    state.health.insert(key.id, h.clone());
                }
                _ => {}
            }
        }
        for key in &self.keys {
            if let Some(sent) = old_state.sent.get(&key.id) {
                state.sent.insert(key.id, sent.clone());
            }
        }
        if !self.keys.is_empty() {
            state.next = old_state.next % self.keys.len();
        }
    }

    /// Every key's state, in pool order.
    pub fn status(&self) -> Vec<KeyStatus> {
        let now = Instant::now();
        let state = self.with_state(|state| state.clone());
        self.keys
            .iter()
            .map(|key| {
                let (state_name, usable_in, reason) = match state.health.get(&key.id) {
                    Some(KeyHealth::CoolingDown { until, .. }) if *until > now => {
                        ("cooling_down", Some(*until - now), None)
                    }
                    Some(KeyHealth::Disabled { reason, since, .. }) => (
                        "disabled",
                        Some(self.recheck.saturating_sub(now.duration_since(*since))),
                        Some(reason.clone()),
                    ),
                    _ => ("active", None, None),
                };
                KeyStatus {
                    fingerprint: key.fingerprint.clone(),
                    source: key.source.clone(),
                    state: state_name,
                    usable_in_s: usable_in.map(|d| d.as_secs_f64().ceil() as u64),
                    reason,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(keys: &[&str]) -> KeyPool {
        KeyPool::new(
            keys.iter()
                .map(|k| (SecretString::from(k.to_string()), "test".to_string())),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn duplicates_merge_and_picks_go_round_robin() {
        let p = pool(&[
            "sk-aaaaaaaaaaaa1111",
            "sk-bbbbbbbbbbbb2222",
            "sk-aaaaaaaaaaaa1111",
        ]);
        assert_eq!(p.len(), 2);
        let picks: Vec<_> = (0..4)
            .map(|_| p.pick(&[]).unwrap().fingerprint().to_string())
            .collect();
        assert_eq!(picks, ["sk-…1111", "sk-…2222", "sk-…1111", "sk-…2222"]);
    }

    #[test]
    fn requests_per_minute_spreads_calls_and_says_when_a_key_is_free_again() {
        let p =
            pool(&["sk-aaaaaaaaaaaa1111", "sk-bbbbbbbbbbbb2222"]).with_requests_per_minute(Some(2));
        let picks: Vec<_> = (0..4)
            .map(|_| p.pick(&[]).unwrap().fingerprint().to_string())
            .collect();
        assert_eq!(picks, ["sk-…1111", "sk-…2222", "sk-…1111", "sk-…2222"]);
        let err = p.pick(&[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert!(
            err.message.contains("requests_per_minute (2)"),
            "{}",
            err.message
        );
        let wait = err.retry_after.expect("says when");
        assert!(wait > Duration::from_secs(58) && wait <= MINUTE, "{wait:?}");

        // The budget is the key's, not the pool's: a reload keeps what was spent.
        let reloaded =
            pool(&["sk-aaaaaaaaaaaa1111", "sk-cccccccccccc3333"]).with_requests_per_minute(Some(2));
        reloaded.carry_over(&p, true);
        assert_eq!(reloaded.pick(&[]).unwrap().fingerprint(), "sk-…3333");
    }

    #[test]
    fn a_cooling_key_is_skipped_and_exhaustion_says_when() {
        let p = pool(&["sk-aaaaaaaaaaaa1111", "sk-bbbbbbbbbbbb2222"]);
        let a = p.pick(&[]).unwrap();
        p.cool_down(&a, Some(Duration::from_secs(30)));
        assert_eq!(p.pick(&[]).unwrap().fingerprint(), "sk-…2222");
        let b = p.pick(&[]).unwrap();
        assert_eq!(b.fingerprint(), "sk-…2222");
        let err = p.pick(&[&b]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        p.cool_down(&b, None);
        let err = p.pick(&[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert!(err.retryable);
        assert!(err.retry_after.is_some_and(|d| d <= Duration::from_secs(1)));
        assert!(
            err.message.contains("usable again in 1 s"),
            "{}",
            err.message
        );
    }

    #[test]
    fn disabled_keys_stay_out_until_the_config_changes() {
        let p = pool(&["sk-aaaaaaaaaaaa1111"]);
        let a = p.pick(&[]).unwrap();
        p.disable(&a, ErrorKind::Auth, "rejected (HTTP 401)");
        let err = p.pick(&[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Auth);
        assert!(!err.retryable);
        assert!(
            err.message
                .contains("sk-…1111 disabled (rejected (HTTP 401))"),
            "{}",
            err.message
        );
        assert_eq!(p.status()[0].state, "disabled");

        let same = pool(&["sk-aaaaaaaaaaaa1111"]);
        same.carry_over(&p, false);
        assert!(
            same.pick(&[]).is_err(),
            "unchanged config keeps it disabled"
        );
        let changed = pool(&["sk-aaaaaaaaaaaa1111"]);
        changed.carry_over(&p, true);
        assert!(
            changed.pick(&[]).is_ok(),
            "a changed config gives it another chance"
        );
    }

    #[test]
    fn recheck_interval_lets_a_disabled_key_be_tried_again() {
        let p = KeyPool::new(
            [(SecretString::from("sk-aaaaaaaaaaaa1111"), "t".to_string())],
            Duration::ZERO,
        );
        let a = p.pick(&[]).unwrap();
        p.disable(&a, ErrorKind::Auth, "401");
        assert!(p.pick(&[]).is_ok());
    }

    #[test]
    fn an_all_disabled_pool_reports_why_they_were_disabled() {
        let p = pool(&["sk-aaaaaaaaaaaa1111"]);
        let a = p.pick(&[]).unwrap();
        p.disable(
            &a,
            ErrorKind::QuotaExhausted,
            "out of quota (insufficient_quota)",
        );
        let err = p.pick(&[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::QuotaExhausted);
        assert!(
            err.message.contains("insufficient_quota"),
            "{}",
            err.message
        );
    }

    #[test]
    fn cooldowns_survive_a_reload_for_keys_that_stay() {
        let old = pool(&["sk-aaaaaaaaaaaa1111", "sk-bbbbbbbbbbbb2222"]);
        let a = old.pick(&[]).unwrap();
        old.cool_down(&a, Some(Duration::from_secs(30)));
        let new = pool(&["sk-aaaaaaaaaaaa1111", "sk-cccccccccccc3333"]);
        new.carry_over(&old, true);
        let status = new.status();
        assert_eq!(
            (status[0].state, status[1].state),
            ("cooling_down", "active")
        );
    }

    /// Records every change told, as (fingerprint, change).
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(String, KeyChange)>>);

    impl KeyEvents for Recorder {
        fn key_changed(&self, _id: &KeyId, fingerprint: &str, change: &KeyChange) {
            self.0
                .lock()
                .unwrap()
                .push((fingerprint.to_string(), change.clone()));
        }
    }

    #[test]
    fn changes_made_here_are_told_and_changes_applied_from_elsewhere_are_not() {
        let p = pool(&["sk-aaaaaaaaaaaa1111", "sk-bbbbbbbbbbbb2222"]);
        let recorder = Arc::new(Recorder::default());
        p.set_events(Some(recorder.clone()));
        let a = p.pick(&[]).unwrap();
        p.succeeded(&a);
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "a healthy success says nothing"
        );
        p.cool_down(&a, Some(Duration::from_secs(30)));
        p.succeeded(&a);
        p.disable(&a, ErrorKind::Auth, "rejected (HTTP 401)");
        let told = recorder.0.lock().unwrap().clone();
        assert_eq!(
            told,
            [
                (
                    "sk-…1111".to_string(),
                    KeyChange::CooledDown {
                        rest: Duration::from_secs(30),
                        strikes: 1
                    }
                ),
                ("sk-…1111".to_string(), KeyChange::Recovered),
                (
                    "sk-…1111".to_string(),
                    KeyChange::Disabled {
                        kind: ErrorKind::Auth,
                        reason: "rejected (HTTP 401)".into(),
                        rest: Duration::from_secs(600)
                    }
                ),
            ]
        );

        // Another process's cooldown of the second key: applied, not told again.
        let b_id = *p.ids().nth(1).unwrap();
        let cooled = KeyChange::CooledDown {
            rest: Duration::from_secs(20),
            strikes: 2,
        };
        assert!(p.apply(&b_id, &cooled));
        assert!(!p.apply(&[7; 32], &cooled), "not a key of this pool");
        assert_eq!(recorder.0.lock().unwrap().len(), 3);
        let status = p.status();
        assert_eq!(
            (status[0].state, status[1].state),
            ("disabled", "cooling_down")
        );
        assert_eq!(status[1].usable_in_s, Some(20));
        // A shorter rest from elsewhere does not cut a longer one short; a disable stays.
        p.apply(
            &b_id,
            &KeyChange::CooledDown {
                rest: Duration::from_secs(1),
                strikes: 1,
            },
        );
        assert_eq!(p.status()[1].usable_in_s, Some(20));
        p.apply(a.id(), &cooled);
        assert_eq!(p.status()[0].state, "disabled");
        // A disable from elsewhere keeps its remaining rest here.
        p.apply(
            &b_id,
            &KeyChange::Disabled {
                kind: ErrorKind::QuotaExhausted,
                reason: "out of quota".into(),
                rest: Duration::from_secs(100),
            },
        );
        let status = p.status();
        assert_eq!(status[1].state, "disabled");
        assert_eq!(status[1].usable_in_s, Some(100));
        p.apply(&b_id, &KeyChange::Recovered);
        p.apply(a.id(), &KeyChange::Recovered);
        assert!(p.status().iter().all(|k| k.state == "active"));
        assert_eq!(recorder.0.lock().unwrap().len(), 3);
    }

    #[test]
    fn debug_and_status_never_show_a_key() {
        let p = pool(&["sk-SENTINEL-keys-0123456789"]);
        let text = format!(
            "{p:?} {:?} {}",
            p.pick(&[]).unwrap(),
            serde_json::to_string(&p.status()).unwrap()
        );
        assert!(!text.contains("SENTINEL"), "{text}");
        assert!(text.contains("sk-…6789"));
    }
}
