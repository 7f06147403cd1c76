//! When to retry a failed call, and how long to wait first.
//!
//! What is retryable is each provider's to say (its `parse_error` sets
//! [`ProviderError::retry`]); the policy here says how often and how long to wait. A read
//! timeout is not retried unless [`RetryPolicy::retry_on_timeout`] says so: image requests
//! carry no idempotency key, so the timed-out generation may still be running and billed, and
//! a retry would pay twice.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::{ErrorKind, ProviderError};

/// How a provider retries: how often, how long it waits, and what it retries at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a retryable failure is retried.
    pub max_retries: u32,
    /// The wait before the first retry when the server gives no hint; it doubles each retry.
    pub base: Duration,
    /// The longest wait between retries when the server gives no hint.
    pub max: Duration,
    /// The longest server-asked wait honoured; a longer one means no retry.
    pub retry_after_cap: Duration,
    /// Whether a read timeout (request sent, no complete answer) is retried, at the risk of paying twice.
    pub retry_on_timeout: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
            retry_after_cap: Duration::from_secs(120),
            retry_on_timeout: false,
        }
    }
}

/// Why a failure is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Retrying cannot help, or the server said not to.
    Permanent,
    /// A read timeout while `retry_on_timeout` is off.
    ReadTimeout,
    /// The server asked for this wait, longer than `retry_after_cap`.
    WaitTooLong(Duration),
    /// Every allowed retry was made.
    OutOfRetries,
}

impl RetryPolicy {
    /// The wait before retry number `retries_done + 1` when the server gives no hint:
    /// `min(base * 2^retries_done, max) * jitter`, with `jitter` in (0.75, 1].
    pub fn backoff(&self, retries_done: u32, jitter: f64) -> Duration {
        let doubled = self.base.saturating_mul(2u32.saturating_pow(retries_done));
        doubled.min(self.max).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// How long to wait before retrying after `err`, `retries_done` retries into the call.
    pub fn next_delay(&self, err: &ProviderError, retries_done: u32) -> Result<Duration, GiveUp> {
        if !err.retryable {
            return Err(GiveUp::Permanent);
        }
        if is_read_timeout(err) && !self.retry_on_timeout {
            return Err(GiveUp::ReadTimeout);
        }
        if let Some(wait) = err.retry_after.filter(|w| *w > self.retry_after_cap) {
            return Err(GiveUp::WaitTooLong(wait));
        }
        if retries_done >= self.max_retries {
            return Err(GiveUp::OutOfRetries);
        }
        Ok(match err.retry_after {
            Some(wait) if !wait.is_zero() => wait,
            _ => self.backoff(retries_done, jitter()),
        })
    }
}

/// Whether `err` is a read timeout: the request went out, so the upstream may bill for it.
pub fn is_read_timeout(err: &ProviderError) -> bool {
    // An HTTP 408 is the server declining to work, so it carries a status and costs nothing.
    err.kind == ErrorKind::Timeout && err.request_sent && err.status.is_none()
}

/// The wait the server asked for in `retry-after` (seconds or an HTTP date, measured from
/// `now`).
///
/// Any number parses: one too large for a `Duration` is [`Duration::MAX`], so an absurd wait
/// reads as too long (and fails the call) rather than as no hint (and a prompt retry). Callers
/// clamp it to their `retry_after_cap` before resting a key over it.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = header(headers, "retry-after")?;
    seconds(value, 1.0).or_else(|| {
        let when = httpdate::parse_http_date(value).ok()?;
        Some(when.duration_since(now).unwrap_or(Duration::ZERO))
    })
}

/// A header's value, trimmed, when it is text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A non-negative number of `1 / scale` seconds as a wait; one too large is [`Duration::MAX`].
pub fn seconds(s: &str, scale: f64) -> Option<Duration> {
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| Duration::try_from_secs_f64(x / scale).unwrap_or(Duration::MAX))
}

/// A random jitter factor in (0.75, 1], so clients that failed together do not retry together.
pub fn jitter() -> f64 {
    1.0 - 0.25 * fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_from_now() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0, 1.0), Duration::from_millis(500));
        assert_eq!(p.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(8));
        assert_eq!(p.backoff(0, 0.8), Duration::from_millis(400));
        let custom = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(300),
            ..p
        };
        assert_eq!(custom.backoff(1, 1.0), Duration::from_millis(200));
        assert_eq!(custom.backoff(2, 1.0), Duration::from_millis(300));
        for _ in 0..1000 {
            let j = jitter();
            assert!(j > 0.75 && j <= 1.0, "{j}");
        }
    }

    #[test]
    fn next_delay_honours_hints_limits_and_read_timeouts() {
        let p = RetryPolicy::default();
        let rate = ProviderError::new(ErrorKind::RateLimited, "x").with_status(429);
        let hinted = rate.clone().with_retry_after(Some(Duration::from_secs(3)));
        assert_eq!(p.next_delay(&hinted, 0), Ok(Duration::from_secs(3)));
        assert_eq!(p.next_delay(&hinted, 2), Err(GiveUp::OutOfRetries));
        let too_long = rate
            .clone()
            .with_retry_after(Some(Duration::from_secs(121)));
        assert_eq!(
            p.next_delay(&too_long, 0),
            Err(GiveUp::WaitTooLong(Duration::from_secs(121)))
        );
        let patient = RetryPolicy {
            retry_after_cap: Duration::from_secs(200),
            ..p
        };
        assert_eq!(
            patient.next_delay(&too_long, 0),
            Ok(Duration::from_secs(121))
        );
        let zero = rate.clone().with_retry_after(Some(Duration::ZERO));
        let d = p.next_delay(&zero, 1).unwrap();
        assert!(
            d > Duration::from_millis(750) && d <= Duration::from_secs(1),
            "{d:?}"
        );

        let read_timeout = ProviderError::new(ErrorKind::Timeout, "x").with_request_sent(true);
        assert!(read_timeout.retryable);
        assert_eq!(p.next_delay(&read_timeout, 0), Err(GiveUp::ReadTimeout));
        let brave = RetryPolicy {
            retry_on_timeout: true,
            ..p
        };
        assert!(brave.next_delay(&read_timeout, 0).is_ok());
        let http_408 = ProviderError::new(ErrorKind::Timeout, "x").with_status(408);
        assert!(p.next_delay(&http_408, 0).is_ok());
        // A timeout before anything went out (the mock's, a connect timeout) costs nothing.
        let unsent = ProviderError::new(ErrorKind::Timeout, "x");
        assert!(p.next_delay(&unsent, 0).is_ok());
        let refused = ProviderError::new(ErrorKind::ContentPolicy, "x").with_status(400);
        assert_eq!(p.next_delay(&refused, 0), Err(GiveUp::Permanent));
    }
}
