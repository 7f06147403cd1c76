//! When to retry a failed generation, and how long to wait first.
//!
//! The rules follow OpenAI's own SDKs: `x-should-retry` wins; otherwise 408, 409, 429 (except
//! `insufficient_quota`), 5xx and connection failures are retried. A read timeout is not:
//! image requests carry no idempotency key, so the timed-out generation may still be running
//! and billed, and a retry would pay twice.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::{ErrorKind, ProviderError};

/// The longest server-requested wait honoured; a longer request means no retry.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(120);

/// The longest wait between retries when the server gives no hint.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What `x-should-retry` says, if the server sent it with a value we understand.
pub fn should_retry_header(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Whether a failure with this status is worth retrying when no header says otherwise.
///
/// `code` and `error_type` are the provider's `error.code` and `error.type`; either one being
/// `insufficient_quota` makes a 429 permanent.
pub fn status_is_retryable(status: u16, code: Option<&str>, error_type: Option<&str>) -> bool {
    match status {
        408 | 409 => true,
        429 => ![code, error_type].contains(&Some("insufficient_quota")),
        s => s >= 500,
    }
}

/// The wait the server asked for: `retry-after-ms` (milliseconds), else `retry-after`
/// (seconds or an HTTP date, measured from `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .and_then(|x| Duration::try_from_secs_f64(x).ok())
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| seconds(v).map(|d| d / 1000)) {
        return Some(ms);
    }
    let value = header("retry-after")?;
    seconds(value).or_else(|| {
        let when = httpdate::parse_http_date(value).ok()?;
        Some(when.duration_since(now).unwrap_or(Duration::ZERO))
    })
}

/// The wait before retry number `retries_done + 1` when the server gives no hint:
/// `min(0.5 s * 2^retries_done, 8 s) * jitter`, with `jitter` in (0.75, 1].
pub fn backoff(retries_done: u32, jitter: f64) -> Duration {
    let base = 0.5 * 2f64.powi(retries_done.min(16) as i32);
    Duration::from_secs_f64(base.min(MAX_BACKOFF.as_secs_f64()) * jitter.clamp(0.0, 1.0))
}

/// A random jitter factor in (0.75, 1], so clients that failed together do not retry together.
pub fn jitter() -> f64 {
    1.0 - 0.25 * fastrand::f64()
}

/// Whether `err` may be retried at all, ignoring how many retries are left.
pub fn is_retryable(err: &ProviderError) -> bool {
    // A timeout without a status is a read timeout: the request was sent and may be billed.
    let read_timeout = err.kind == ErrorKind::Timeout && err.status.is_none();
    err.retryable && !read_timeout
}

/// How long to wait before retrying after `err`, or `None` to give up.
///
/// `retries_done` counts the retries already made; at most `max_retries` are made.
pub fn next_delay(err: &ProviderError, retries_done: u32, max_retries: u32) -> Option<Duration> {
    if retries_done >= max_retries || !is_retryable(err) {
        return None;
    }
    match err.retry_after {
        Some(wait) if wait > MAX_SERVER_DELAY => None,
        Some(wait) if !wait.is_zero() => Some(wait),
        _ => Some(backoff(retries_done, jitter())),
    }
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
    fn retry_after_ms_beats_retry_after_and_dates_count_from_now() {
        let now = SystemTime::now();
        let h = headers(&[("retry-after-ms", "50.5"), ("retry-after", "30")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_micros(50_500)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        let wait = retry_after(&headers(&[("retry-after", &later)]), now).unwrap();
        assert!(
            wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn statuses_follow_the_sdk_rules() {
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(status_is_retryable(s, None, None), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!status_is_retryable(s, None, None), "{s}");
        }
        assert!(!status_is_retryable(429, Some("insufficient_quota"), None));
        assert!(!status_is_retryable(429, None, Some("insufficient_quota")));
    }

    #[test]
    fn should_retry_header_is_read_case_insensitively() {
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "TRUE")])),
            Some(true)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "maybe")])),
            None
        );
    }

    #[test]
    fn backoff_doubles_up_to_eight_seconds_with_jitter() {
        assert_eq!(backoff(0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(40, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(0, 0.8), Duration::from_millis(400));
        for _ in 0..1000 {
            let j = jitter();
            assert!(j > 0.75 && j <= 1.0, "{j}");
        }
    }

    #[test]
    fn next_delay_honours_hints_limits_and_read_timeouts() {
        let rate = ProviderError::new(ErrorKind::RateLimited, "x").with_status(429);
        let hinted = rate.clone().with_retry_after(Some(Duration::from_secs(3)));
        assert_eq!(next_delay(&hinted, 0, 2), Some(Duration::from_secs(3)));
        assert_eq!(next_delay(&hinted, 2, 2), None);
        let too_long = rate
            .clone()
            .with_retry_after(Some(Duration::from_secs(121)));
        assert_eq!(next_delay(&too_long, 0, 2), None);
        let zero = rate.clone().with_retry_after(Some(Duration::ZERO));
        let d = next_delay(&zero, 1, 2).unwrap();
        assert!(
            d > Duration::from_millis(750) && d <= Duration::from_secs(1),
            "{d:?}"
        );

        let read_timeout = ProviderError::new(ErrorKind::Timeout, "x");
        assert!(read_timeout.retryable);
        assert_eq!(next_delay(&read_timeout, 0, 2), None);
        let http_408 = ProviderError::new(ErrorKind::Timeout, "x").with_status(408);
        assert!(next_delay(&http_408, 0, 2).is_some());
        let refused = ProviderError::new(ErrorKind::ContentPolicy, "x").with_status(400);
        assert_eq!(next_delay(&refused, 0, 2), None);
    }
}
