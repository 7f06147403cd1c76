//! Reading the shared HTTP settings into the core's types, and the checks every remote
//! provider's own settings share (a base URL, poll intervals).

use std::time::Duration;

use crate::build::{HttpConfig, SettingError};

use super::{ClientCache, Poller, RetryPolicy};

/// The base URL a checked setting names, for building.
pub fn parse_base_url(base_url: &str) -> Result<url::Url, String> {
    url::Url::parse(base_url).map_err(|e| format!("base_url is not a valid URL ({e})"))
}

/// The shared client for `http`'s connect timeout.
pub fn client(clients: &ClientCache, http: &HttpConfig) -> Result<reqwest::Client, String> {
    clients
        .client(http.connect_timeout_s)
        .map_err(|e| format!("the HTTP client cannot be built: {e}"))
}

/// Checks a base URL without quoting it.
pub fn check_base_url(base_url: &str) -> Result<(), SettingError> {
    check_url("base_url", base_url)
}

/// Checks that setting `key` is an http(s) URL with a host, without quoting it (it may carry
/// credentials).
pub fn check_url(key: &'static str, value: &str) -> Result<(), SettingError> {
    let invalid = |message: String| Err(SettingError::new(key, message));
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => invalid("must be an http:// or https:// URL".into()),
        Err(e) => invalid(format!("is not a valid URL ({e})")),
    }
}

/// Checks the poll intervals: from 1 ms to a minute, the first no longer than the longest.
pub fn check_poll(interval_ms: u64, max_ms: u64) -> Result<(), SettingError> {
    if !(1..=60_000).contains(&interval_ms) {
        return Err(SettingError::new(
            "poll_interval_ms",
            "must be between 1 and 60000",
        ));
    }
    if !(interval_ms..=60_000).contains(&max_ms) {
        return Err(SettingError::new(
            "poll_max_interval_ms",
            "must be between poll_interval_ms and 60000",
        ));
    }
    Ok(())
}

/// The retry settings of `http` as one policy.
pub fn retry_policy(http: &HttpConfig) -> RetryPolicy {
    RetryPolicy {
        max_retries: http.max_retries,
        base: Duration::from_millis(http.retry_base_ms),
        max: Duration::from_millis(http.retry_max_ms),
        retry_after_cap: Duration::from_secs(http.retry_after_cap_s),
        retry_on_timeout: http.retry_on_timeout,
    }
}

/// Status checks from `interval_ms`, growing by half each time up to `max_ms`.
pub fn poller(interval_ms: u64, max_ms: u64) -> Poller {
    Poller::new(
        Duration::from_millis(interval_ms),
        Duration::from_millis(max_ms),
        1.5,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_and_poll_intervals_are_checked_by_key_without_quoting() {
        assert!(check_base_url("https://api.bfl.ai/v1").is_ok());
        let err = check_base_url("ftp://user:SECRET@host/").unwrap_err();
        assert_eq!(err.key, "base_url");
        assert!(!err.message.contains("SECRET"), "{}", err.message);
        assert!(check_base_url("not a url").is_err());
        assert!(check_poll(500, 4_000).is_ok());
        assert_eq!(check_poll(0, 4_000).unwrap_err().key, "poll_interval_ms");
        assert_eq!(
            check_poll(500, 100).unwrap_err().key,
            "poll_max_interval_ms"
        );
        assert_eq!(poller(500, 4_000).wait_after(1), Duration::from_millis(500));
        let policy = retry_policy(&HttpConfig::default());
        assert_eq!(policy.max_retries, 2);
    }
}
