//! OpenAI's retry rules, as its own SDKs apply them: `x-should-retry` wins; otherwise 408,
//! 409, 429 (except `insufficient_quota`), 5xx and connection failures are retried, and
//! `retry-after-ms` is read before `retry-after`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::http::retry;

/// What `x-should-retry` says, if the server sent it with a value we understand.
pub(crate) fn should_retry_header(headers: &HeaderMap) -> Option<bool> {
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
pub(crate) fn status_is_retryable(
    status: u16,
    code: Option<&str>,
    error_type: Option<&str>,
) -> bool {
    match status {
        408 | 409 => true,
        429 => ![code, error_type].contains(&Some("insufficient_quota")),
        s => s >= 500,
    }
}

/// The wait the server asked for: `retry-after-ms` (milliseconds, OpenAI's own), else the
/// standard `retry-after` (seconds or an HTTP date, measured from `now`).
///
/// Any number parses: one too large for a `Duration` is [`Duration::MAX`], so an absurd wait
/// reads as too long (and fails the call) rather than as no hint (and a prompt retry).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) =
        retry::header(headers, "retry-after-ms").and_then(|v| retry::seconds(v, 1000.0))
    {
        return Some(ms);
    }
    retry::retry_after(headers, now)
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
    fn absurd_waits_saturate_instead_of_vanishing_or_panicking() {
        let now = SystemTime::now();
        let max = Some(Duration::MAX);
        let h = |k, v| retry_after(&headers(&[(k, v)]), now);
        let ms = h("retry-after-ms", "18446744073709551615").unwrap();
        assert!(ms > Duration::from_secs(18_000_000_000_000_000), "{ms:?}");
        assert_eq!(h("retry-after", "1e300"), max);
        let long = h("retry-after", "9223372036854775807").unwrap();
        assert!(
            long >= Duration::from_secs(9_000_000_000_000_000_000),
            "{long:?}"
        );
        let far = h("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT").unwrap();
        assert!(far > Duration::from_secs(200_000_000_000), "{far:?}");
        assert_eq!(h("retry-after", "inf"), None);
        assert_eq!(h("retry-after", "NaN"), None);
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
}
