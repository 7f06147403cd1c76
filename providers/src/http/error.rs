//! Transport failures classified once, and the pieces of text error messages are made of.

use std::time::Duration;

use reqwest::StatusCode;

use crate::{secret::Scrubber, ErrorKind, ProviderError};

use super::download::RedirectRefused;

/// Classifies a failure to send a request to `what` (`the image API`, `the download of ...`)
/// or to read its answer within `timeout`, recording whether the request went out.
pub fn transport_error(e: reqwest::Error, what: &str, timeout: Duration) -> ProviderError {
    // Redirect refusals carry our own message naming the host.
    if let Some(refused) = find_source::<RedirectRefused>(&e) {
        return ProviderError::new(ErrorKind::BadResponse, format!("{what}: {refused}"))
            .with_request_sent(true);
    }
    let e = e.without_url();
    let detail = error_chain(&e);
    if e.is_connect() {
        ProviderError::new(
            ErrorKind::Network,
            format!("could not connect to {what}: {detail}"),
        )
        .with_request_sent(false)
    } else if e.is_timeout() {
        ProviderError::new(
            ErrorKind::Timeout,
            format!(
                "{what} gave no complete answer within {}; the request was sent and may \
                 still be billed",
                describe_wait(timeout)
            ),
        )
        .with_request_sent(true)
    } else if e.is_builder() {
        ProviderError::new(
            ErrorKind::InvalidRequest,
            format!(
                "could not build the request ({detail}); check the API key, organization \
                 and project for invalid characters"
            ),
        )
        .with_retryable(false)
        .with_request_sent(false)
    } else if e.is_body() || e.is_decode() {
        ProviderError::new(
            ErrorKind::BadResponse,
            format!("the answer from {what} broke off: {detail}"),
        )
        .with_request_sent(true)
    } else {
        // A reset or a closed connection: it may have happened after the request went out,
        // so it counts as sent (the safe reading for billing).
        ProviderError::new(
            ErrorKind::Network,
            format!("the connection to {what} failed: {detail}"),
        )
        .with_request_sent(true)
    }
}

/// The first error of type `T` in `e`'s chain of causes.
pub fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// An error and its causes on one line; reqwest's own text holds no headers.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// A URL fit for messages: no credentials, no (often signed) query string.
pub fn redacted(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// A byte count for people: `64 MiB`, `1.5 MiB`, `1000 bytes`.
pub fn describe_bytes(n: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

/// A wait for people: `121 s`, `0.1 s`.
pub fn describe_wait(wait: Duration) -> String {
    let secs = wait.as_secs_f64();
    if secs >= 1.0 && wait.subsec_millis() == 0 {
        format!("{} s", wait.as_secs())
    } else {
        format!("{secs:.1} s")
    }
}

/// What an error body that is not JSON says: an excerpt of its text, scrubbed, or only that it
/// was HTML (a proxy's or load balancer's page says nothing useful and may be large).
pub fn text_body_message(status: StatusCode, body: &[u8], scrubber: &Scrubber) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        None
    } else if text.starts_with('<') {
        Some(format!("HTTP {} with an HTML body", status.as_u16()))
    } else {
        Some(scrubber.excerpt(text, 200))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_waits_read_well() {
        assert_eq!(describe_bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(describe_bytes(1000), "1000 bytes");
        assert_eq!(describe_wait(Duration::from_secs(121)), "121 s");
        assert_eq!(describe_wait(Duration::from_millis(50)), "0.1 s");
    }

    #[test]
    fn redacted_urls_drop_credentials_and_queries() {
        let url: url::Url = "https://user:pw@files.example.com:8443/a.png?sig=SECRET"
            .parse()
            .unwrap();
        assert_eq!(redacted(&url), "https://files.example.com:8443/a.png");
    }

    #[tokio::test]
    async fn a_refused_connection_was_not_sent() {
        // Port 9 on localhost: nothing listens, so the connect fails before anything is sent.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:9/")
            .send()
            .await
            .unwrap_err();
        let err = transport_error(e, "the test server", Duration::from_secs(1));
        assert_eq!(err.kind, ErrorKind::Network);
        assert!(!err.request_sent, "{err}");
    }
}
