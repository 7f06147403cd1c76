//! The attempt loop every keyed, retried provider call goes through.
//!
//! A provider hands [`Executor::run`] one closure that sends one attempt with the key it is
//! given and classifies the answer (its own `parse_error`), and one that turns the successful
//! answer into the result. The executor owns the rest: which key of the pool each attempt
//! uses, resting a rate-limited key and disabling a rejected one (moving to another key at
//! once, which is not a retry), waiting for a key when all are resting, the retry policy and
//! `Retry-After`, the call's deadline, cancellation, progress events, scrubbing secrets from
//! every error, and the final error's wording (why it was not retried, how far it got).

use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use crate::{
    keys::{KeyPool, PoolKey},
    secret::Scrubber,
    CallOptions, ErrorKind, ProviderError, ProviderEvent,
};

use super::{
    error::describe_wait,
    retry::{GiveUp, RetryPolicy},
};

/// Runs provider calls: keys, retries, deadline and cancellation, for one provider instance.
#[derive(Debug, Clone)]
pub struct Executor {
    kind: &'static str,
    keys: Arc<KeyPool>,
    policy: RetryPolicy,
    deadline: Duration,
    scrubber: Scrubber,
}

/// What one attempt is given.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt {
    /// Which attempt this is (1-based).
    pub number: u32,
    /// The key to send with; `None` when the pool has no keys at all.
    pub key: Option<Arc<PoolKey>>,
    /// When the whole call must be done.
    pub deadline: Instant,
}

impl Attempt {
    /// The key as a reference, for building the request.
    pub fn key(&self) -> Option<&PoolKey> {
        self.key.as_deref()
    }
}

/// A successful attempt's answer, handed to the step that turns it into the result.
#[derive(Debug)]
#[non_exhaustive]
pub struct Sent<T> {
    /// What the attempt returned.
    pub value: T,
    /// The key it used (for follow-up requests such as polling).
    pub key: Option<Arc<PoolKey>>,
    /// How many attempts the call made.
    pub attempts: u32,
    /// How many of them were retries.
    pub retries: u32,
    /// When the whole call must be done.
    pub deadline: Instant,
}

/// How far a call got, kept outside its future so a deadline or a cancellation can report it.
#[derive(Debug, Default)]
struct CallState {
    attempts: u32,
    last_error: Option<ProviderError>,
    last_key: Option<String>,
}

impl Executor {
    /// An executor for a provider of `kind` using `keys`, retrying per `policy`, each call
    /// taking at most `deadline` in all.
    pub fn new(
        kind: &'static str,
        keys: Arc<KeyPool>,
        policy: RetryPolicy,
        deadline: Duration,
    ) -> Self {
        Self {
            kind,
            keys,
            policy,
            deadline,
            scrubber: Scrubber::default(),
        }
    }

    /// Scrubs every error with `scrubber` (the pool's keys, the base URL's password) before
    /// anything logs it, rests a key over it or returns it.
    pub fn with_scrubber(mut self, scrubber: Scrubber) -> Self {
        self.scrubber = scrubber;
        self
    }

    /// The key pool attempts draw from.
    pub fn keys(&self) -> &Arc<KeyPool> {
        &self.keys
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The provider's own deadline for one call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The scrubber errors pass through.
    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    /// The key for a one-off request outside the loop (a model listing), skipping `left`;
    /// `None` when the pool has no keys at all.
    pub fn next_key(&self, left: &[Arc<PoolKey>]) -> Result<Option<Arc<PoolKey>>, ProviderError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let left: Vec<&PoolKey> = left.iter().map(|k| &**k).collect();
        self.keys.pick(&left).map(Some)
    }

    /// Runs one call for `model` (`what` names it in logs): `attempt` until it succeeds or
    /// the policy gives up, then `finish` on its answer, all within the deadline (the
    /// provider's, or the caller's when sooner) and until `options.cancel` fires.
    pub async fn run<T, U, A, AF, F, FF>(
        &self,
        options: &CallOptions,
        what: &'static str,
        model: &str,
        attempt: A,
        finish: F,
    ) -> Result<U, ProviderError>
    where
        A: FnMut(Attempt) -> AF,
        AF: Future<Output = Result<T, ProviderError>>,
        F: FnOnce(Sent<T>) -> FF,
        FF: Future<Output = Result<U, ProviderError>>,
    {
        let start = Instant::now();
        let own = later_from(start, self.deadline);
        let deadline = options.deadline.map_or(own, |d| d.min(own));
        let budget = deadline.saturating_duration_since(start);
        let mut state = CallState::default();
        let outcome = {
            // Everything runs inside this one future, so reaching the deadline, a
            // cancellation or the caller dropping it abandons the request in flight or the
            // wait in progress at once.
            let work = pin!(tokio::time::timeout_at(
                deadline,
                self.attempts(options, what, deadline, budget, attempt, finish, &mut state),
            ));
            tokio::select! {
                biased;
                _ = options.cancel.cancelled() => None,
                outcome = work => Some(outcome),
            }
        };
        let context = |e: ProviderError, state: &CallState| {
            e.with_context(self.kind, Some(model))
                .with_key_fingerprint(state.last_key.clone())
        };
        match outcome {
            Some(Ok(result)) => {
                result.map_err(|e| context(e.with_attempts(state.attempts), &state))
            }
            Some(Err(_)) => Err(context(deadline_reached(&state, budget), &state)),
            None => Err(context(cancelled(&state), &state)),
        }
    }

    /// Runs a call whose successful attempt is already the result.
    pub async fn once<T, A, AF>(
        &self,
        options: &CallOptions,
        what: &'static str,
        model: &str,
        attempt: A,
    ) -> Result<T, ProviderError>
    where
        A: FnMut(Attempt) -> AF,
        AF: Future<Output = Result<T, ProviderError>>,
    {
        self.run(options, what, model, attempt, |sent| async move {
            Ok(sent.value)
        })
        .await
    }

    /// The attempts of one call: keys, retries and waits, up to a result or a final error.
    #[allow(clippy::too_many_arguments)]
    async fn attempts<T, U, A, AF, F, FF>(
        &self,
        options: &CallOptions,
        what: &'static str,
        deadline: Instant,
        budget: Duration,
        mut attempt: A,
        finish: F,
        state: &mut CallState,
    ) -> Result<U, ProviderError>
    where
        A: FnMut(Attempt) -> AF,
        AF: Future<Output = Result<T, ProviderError>>,
        F: FnOnce(Sent<T>) -> FF,
        FF: Future<Output = Result<U, ProviderError>>,
    {
        let events = &options.events;
        let policy = &self.policy;
        let pool = &self.keys;
        let mut retries = 0;
        // Keys this call moved away from since its last wait.
        let mut left: Vec<Arc<PoolKey>> = Vec::new();
        let mut key = self.wait_for_key(&left, deadline, options).await?;
        loop {
            state.attempts += 1;
            state.last_key = key.as_ref().map(|k| k.fingerprint().to_string());
            events.send(ProviderEvent::Requesting {
                attempt: state.attempts,
                key: state.last_key.clone(),
            });
            let sent = attempt(Attempt {
                number: state.attempts,
                key: key.clone(),
                deadline,
            })
            .await;
            let err = match sent {
                Ok(value) => {
                    if let Some(key) = &key {
                        pool.succeeded(key);
                    }
                    let sent = Sent {
                        value,
                        key,
                        attempts: state.attempts,
                        retries,
                        deadline,
                    };
                    // Parse errors and download failures quote what the upstream sent.
                    let result = finish(sent).await.map_err(|e| self.scrubber.error(e));
                    tracing::debug!(retries, call = what, ok = result.is_ok(), "call done");
                    return result;
                }
                // Scrubbed before anything logs it or rests a key over it.
                Err(err) => self.scrubber.error(err),
            };
            // How long until some key of the pool is usable again, when none is now.
            let mut key_wait = Duration::ZERO;
            // A 403 is often about one model (an unverified organisation, say): taking a lone key
            // out of rotation would block every other model too, so only pools move on from it.
            let action = KeyAction::after(&err, policy.retry_after_cap)
                .filter(|_| err.kind != ErrorKind::Permission || pool.len() > 1);
            if let (Some(used), Some(action)) = (key.clone(), action) {
                action.apply(pool, &used);
                events.send(ProviderEvent::KeyRested {
                    fingerprint: used.fingerprint().to_string(),
                    disabled: action.disables,
                    kind: action.kind,
                });
                left.push(used.clone());
                match self.next_key(&left) {
                    Ok(next) => {
                        tracing::info!(
                            from = used.fingerprint(),
                            reason = %action.reason,
                            "moving to another API key"
                        );
                        events.send(ProviderEvent::SwitchingKey {
                            from: used.fingerprint().to_string(),
                            reason: action.reason,
                        });
                        key = next;
                        state.last_error = Some(err);
                        continue;
                    }
                    Err(none_left) if action.disables => {
                        return Err(no_key_left(err, &none_left, pool.len(), retries));
                    }
                    Err(none_left) => key_wait = none_left.retry_after.unwrap_or_default(),
                }
            }
            let delay = match policy.next_delay(&err, retries) {
                Ok(delay) => delay.max(key_wait),
                Err(why) => return Err(gave_up(err, why, policy, retries)),
            };
            if later(delay) >= deadline {
                let mut err = err;
                err.message = format!(
                    "{}; not retried because waiting {} would pass the call's deadline of {}",
                    err.message,
                    describe_wait(delay),
                    describe_wait(budget)
                );
                return Err(after_retries(err.persistent(), retries));
            }
            tracing::warn!(
                status = ?err.status,
                kind = %err.kind,
                delay_ms = delay.as_millis() as u64,
                attempt = state.attempts,
                retry = retries + 1,
                max_retries = policy.max_retries,
                request_id = err.request_id.as_deref(),
                call = what,
                "request failed; retrying"
            );
            events.send(ProviderEvent::Retrying {
                attempt: state.attempts,
                delay,
                reason: err.message.clone(),
            });
            state.last_error = Some(err);
            tokio::time::sleep(delay).await;
            retries += 1;
            left.clear();
            key = self.wait_for_key(&left, deadline, options).await?;
        }
    }

    /// The next key, waiting when every key is resting briefly: a rate limit seen by one call
    /// should slow the calls beside it, not fail them. A wait past the retry cap or the
    /// deadline fails at once with the pool's error, which says when a key will be usable.
    async fn wait_for_key(
        &self,
        left: &[Arc<PoolKey>],
        deadline: Instant,
        options: &CallOptions,
    ) -> Result<Option<Arc<PoolKey>>, ProviderError> {
        loop {
            let err = match self.next_key(left) {
                Ok(key) => return Ok(key),
                Err(err) => err,
            };
            let wait = match err.retry_after {
                // The floor keeps a cooldown ending right now from spinning.
                Some(wait) if err.kind == ErrorKind::RateLimited => {
                    wait.max(Duration::from_millis(10))
                }
                _ => return Err(err),
            };
            if wait > self.policy.retry_after_cap || later(wait) >= deadline {
                return Err(err);
            }
            options.events.send(ProviderEvent::Retrying {
                attempt: 0,
                delay: wait,
                reason: format!("waiting for an API key: {}", err.message),
            });
            tokio::time::sleep(wait).await;
        }
    }
}

/// The error of a call cut off by its deadline (`budget` after it started), saying how far it got.
fn deadline_reached(call: &CallState, budget: Duration) -> ProviderError {
    let n = call.attempts;
    let last = call
        .last_error
        .as_ref()
        .map(|e| format!("; the last failure before it: {e}"))
        .unwrap_or_default();
    ProviderError::new(
        ErrorKind::Timeout,
        format!(
            "the call did not finish within its deadline of {} after {n} attempt{}{last}",
            describe_wait(budget),
            if n == 1 { "" } else { "s" }
        ),
    )
    .with_attempts(n)
    .with_request_sent(n > 0)
}

/// The error of a call its caller cancelled.
fn cancelled(call: &CallState) -> ProviderError {
    let n = call.attempts;
    ProviderError::new(
        ErrorKind::Cancelled,
        format!(
            "the call was cancelled after {n} attempt{}",
            if n == 1 { "" } else { "s" }
        ),
    )
    .with_attempts(n)
    .with_request_sent(n > 0)
}

/// What a failure says about the key that was used.
#[derive(Debug)]
struct KeyAction {
    /// Out of rotation (rejected, no quota) rather than resting (rate limited).
    disables: bool,
    /// The failure's kind, kept with a disabled key so the pool can report it.
    kind: ErrorKind,
    /// Why, for logs, events and the pool's status.
    reason: String,
    retry_after: Option<Duration>,
    /// The longest rest a key may get (the retry cap).
    cap: Duration,
}

impl KeyAction {
    /// The action `err` calls for, if it is about the key at all. A server-asked rest is cut
    /// to `cap`: a longer one fails the call, and must not lock the key out for longer.
    fn after(err: &ProviderError, cap: Duration) -> Option<Self> {
        let what = match err.kind {
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Auth => "rejected",
            ErrorKind::Permission => "not permitted",
            ErrorKind::QuotaExhausted => "out of quota or over the billing limit",
            _ => return None,
        };
        let detail: Vec<String> = err
            .status
            .map(|s| format!("HTTP {s}"))
            .into_iter()
            .chain(err.provider_code.clone())
            .collect();
        let reason = match detail.is_empty() {
            true => what.to_string(),
            false => format!("{what} ({})", detail.join(", ")),
        };
        Some(Self {
            disables: err.kind != ErrorKind::RateLimited,
            kind: err.kind,
            reason,
            retry_after: err.retry_after.map(|wait| wait.min(cap)),
            cap,
        })
    }

    fn apply(&self, pool: &KeyPool, key: &PoolKey) {
        match self.disables {
            true => pool.disable(key, self.kind, self.reason.clone()),
            false => pool.cool_down_at_most(key, self.retry_after, self.cap),
        }
    }
}

/// The error of the last usable key, noting that the pool has none left.
fn no_key_left(
    mut err: ProviderError,
    pool_err: &ProviderError,
    keys: usize,
    retries: u32,
) -> ProviderError {
    if keys > 1 {
        err.message = format!("{}; {}", err.message, pool_err.message);
    }
    after_retries(err, retries)
}

/// Says in the message why the policy stopped retrying, where the error does not already.
fn gave_up(
    mut err: ProviderError,
    why: GiveUp,
    policy: &RetryPolicy,
    retries: u32,
) -> ProviderError {
    match why {
        GiveUp::ReadTimeout => err
            .message
            .push_str(", so it is not retried (set retry_on_timeout = true to retry it)"),
        GiveUp::WaitTooLong(wait) => {
            let when = http_date_after(wait);
            err.message = format!(
                "{}; the provider asked to wait {}, longer than retry_after_cap ({}), so it was \
                 not retried: try again after {when}",
                err.message,
                describe_wait(wait),
                describe_wait(policy.retry_after_cap)
            );
            err = err.persistent();
        }
        GiveUp::OutOfRetries => err = err.persistent(),
        GiveUp::Permanent => {}
    }
    after_retries(err, retries)
}

/// The HTTP date `wait` from now, or "much later" past what an HTTP date can say (year
/// 9999): a server may ask for any wait, and neither the clock nor the formatter may panic.
fn http_date_after(wait: Duration) -> String {
    // 9999-12-31T23:59:59Z, the last second `httpdate` formats.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let last = SystemTime::UNIX_EPOCH + LAST;
    match SystemTime::now().checked_add(wait) {
        Some(when) if when <= last => httpdate::fmt_http_date(when),
        _ => "much later (a date past year 9999)".into(),
    }
}

/// The instant `wait` from now, or about a century from now when that cannot be represented.
pub fn later(wait: Duration) -> Instant {
    later_from(Instant::now(), wait)
}

fn later_from(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
}

/// Notes in the message that retries were made and did not help.
fn after_retries(mut err: ProviderError, retries: u32) -> ProviderError {
    if retries > 0 {
        let s = if retries == 1 { "y" } else { "ies" };
        err.message = format!("{} (after {retries} retr{s})", err.message);
    }
    err
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use secrecy::SecretString;

    use super::*;
    use crate::{Events, RetryStatus};

    fn pool(keys: &[&str]) -> Arc<KeyPool> {
        Arc::new(KeyPool::new(
            keys.iter()
                .map(|k| (SecretString::from(k.to_string()), "test".to_string())),
            Duration::from_secs(600),
        ))
    }

    fn executor(keys: &[&str]) -> Executor {
        let policy = RetryPolicy {
            max_retries: 2,
            base: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        Executor::new("test", pool(keys), policy, Duration::from_secs(30))
    }

    fn unavailable() -> ProviderError {
        ProviderError::new(ErrorKind::UpstreamUnavailable, "down").with_status(503)
    }

    /// Runs `ex` with attempts answering `script` in turn (then succeeding), and returns the
    /// outcome, the keys each attempt used and the events.
    async fn run_script(
        ex: &Executor,
        options: CallOptions,
        script: Vec<ProviderError>,
    ) -> (Result<u32, ProviderError>, Vec<String>) {
        let script = Mutex::new(script.into_iter());
        let used = Mutex::new(Vec::new());
        let outcome = ex
            .once(&options, "test call", "model-x", |attempt: Attempt| {
                let next = script.lock().unwrap().next();
                used.lock().unwrap().push(
                    attempt
                        .key()
                        .map_or("none".to_string(), |k| k.fingerprint().to_string()),
                );
                async move { next.map_or(Ok(attempt.number), Err) }
            })
            .await;
        (outcome, used.into_inner().unwrap())
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(event) = rx.try_recv() {
            out.push(match event {
                ProviderEvent::Requesting { attempt, .. } => format!("requesting {attempt}"),
                ProviderEvent::Retrying { delay, .. } => format!("retrying in {delay:?}"),
                ProviderEvent::SwitchingKey { from, .. } => format!("switching from {from}"),
                ProviderEvent::KeyRested {
                    fingerprint,
                    disabled,
                    ..
                } => format!(
                    "{} {fingerprint}",
                    if disabled { "disabling" } else { "resting" }
                ),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_temporary_failure_is_retried_after_the_servers_wait() {
        let ex = executor(&[]);
        let (events, mut rx) = Events::channel();
        let started = Instant::now();
        let hinted = unavailable().with_retry_after(Some(Duration::from_secs(3)));
        let (outcome, used) =
            run_script(&ex, CallOptions::new().with_events(events), vec![hinted]).await;
        assert_eq!(outcome, Ok(2));
        assert_eq!(used, ["none", "none"]);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(
            drain(&mut rx),
            ["requesting 1", "retrying in 3s", "requesting 2"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_key_rests_and_the_call_moves_to_the_next_at_once() {
        let ex = executor(&["sk-aaaaaaaaaaaa1111", "sk-bbbbbbbbbbbb2222"]);
        let (events, mut rx) = Events::channel();
        let limited = ProviderError::new(ErrorKind::RateLimited, "slow down")
            .with_status(429)
            .with_retry_after(Some(Duration::from_secs(30)));
        let started = Instant::now();
        let (outcome, used) =
            run_script(&ex, CallOptions::new().with_events(events), vec![limited]).await;
        assert_eq!(outcome, Ok(2));
        assert_eq!(used, ["sk-…1111", "sk-…2222"]);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "moving keys is not a retry"
        );
        assert_eq!(
            drain(&mut rx),
            [
                "requesting 1",
                "resting sk-…1111",
                "switching from sk-…1111",
                "requesting 2"
            ]
        );
        assert_eq!(ex.keys().status()[0].state, "cooling_down");
    }

    #[tokio::test(start_paused = true)]
    async fn running_out_of_retries_is_persistent_and_carries_the_context() {
        let ex = executor(&["sk-aaaaaaaaaaaa1111"]);
        let script = vec![unavailable(), unavailable(), unavailable()];
        let (outcome, _) = run_script(&ex, CallOptions::new(), script).await;
        let err = outcome.unwrap_err();
        assert_eq!(err.retry, RetryStatus::Persistent);
        assert!(err.retryable);
        assert_eq!(err.attempts, 3);
        assert!(err.message.ends_with("(after 2 retries)"), "{err}");
        assert_eq!(
            (
                err.provider.as_deref(),
                err.model.as_deref(),
                err.key_fingerprint.as_deref()
            ),
            (Some("test"), Some("model-x"), Some("sk-…1111"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_key_is_disabled_and_a_permanent_failure_is_not_retried() {
        let ex = executor(&["sk-aaaaaaaaaaaa1111"]);
        let rejected = ProviderError::new(ErrorKind::Auth, "no").with_status(401);
        let (outcome, used) = run_script(&ex, CallOptions::new(), vec![rejected]).await;
        let err = outcome.unwrap_err();
        assert_eq!(
            (err.kind, err.retry),
            (ErrorKind::Auth, RetryStatus::Permanent)
        );
        assert_eq!(used.len(), 1);
        assert_eq!(ex.keys().status()[0].state, "disabled");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sooner_of_the_callers_and_the_providers_deadline_ends_the_call() {
        let ex = executor(&[]);
        let started = Instant::now();
        let options = CallOptions::new().with_deadline(started + Duration::from_secs(5));
        let err = ex
            .once(&options, "test call", "m", |_| async {
                std::future::pending::<Result<(), ProviderError>>().await
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(
            err.message
                .contains("did not finish within its deadline of 5 s after 1 attempt"),
            "{err}"
        );
        assert!(err.request_sent);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_an_attempt_in_flight() {
        let ex = executor(&[]);
        let options = CallOptions::new();
        let cancel = options.cancel.clone();
        let started = Instant::now();
        let call = ex.once(&options, "test call", "m", |_| async {
            std::future::pending::<Result<(), ProviderError>>().await
        });
        let (outcome, _) = tokio::join!(call, async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cancel.cancel();
        });
        let err = outcome.unwrap_err();
        assert_eq!((err.kind, err.attempts), (ErrorKind::Cancelled, 1));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn far_future_dates_and_instants_never_panic() {
        for secs in [300_000_000_000, i64::MAX as u64, u64::MAX] {
            let wait = Duration::from_secs(secs);
            assert!(http_date_after(wait).starts_with("much later"), "{secs}");
            assert!(later(wait) > Instant::now());
        }
        assert!(http_date_after(Duration::from_secs(60)).ends_with("GMT"));
        assert!(http_date_after(Duration::MAX).starts_with("much later"));
    }
}
