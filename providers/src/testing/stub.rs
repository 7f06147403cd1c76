//! How a provider's fake upstream is scripted for the error and hostile rows: the suite says
//! what the next answer means (an error of some status, so many images, a broken stream), and
//! the provider's [`ConformanceStub`] writes it in that provider's wire format.

use std::time::Duration;

use imagegen_testkit::Reply;

/// Where the provider under test points and how it is set up for one row.
#[derive(Debug, Clone)]
pub struct StubTarget {
    /// The fake upstream's base URL, with the sentinel password as its userinfo:
    /// `http://user:SENTINELPASS@127.0.0.1:PORT/v1`.
    pub base_url: url::Url,
    /// The one key of its pool (a sentinel that must never show).
    pub key: &'static str,
    /// Its cap on `Retry-After` waits: short, so a lock-out shows.
    pub retry_after_cap: Duration,
    /// Its per-request timeout: short, so the timeout row runs quickly.
    pub timeout: Duration,
}

/// What an error answer carries.
#[derive(Debug, Clone, Copy)]
pub enum Fault<'a> {
    /// An error whose `field` holds `value`: `message`, `code`, `type` or `param` (a provider
    /// without one of these puts `value` in the field nearest to it).
    Field {
        /// Which field.
        field: &'a str,
        /// What it holds.
        value: &'a str,
    },
    /// The provider's content-policy refusal.
    Refusal,
}

/// A provider's fake upstream, as the rows script it. Every method returns the whole answer
/// to one request; the suite serves it from a [`imagegen_testkit::FakeUpstream`] (any path).
pub trait ConformanceStub: Send + Sync {
    /// The model the rows generate with.
    fn model(&self) -> &str;

    /// A successful answer holding `n` small PNG images.
    fn answer_ok(&self, n: usize) -> Reply;

    /// An error answer of `status` carrying `fault`.
    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply;

    /// A successful answer whose images are at `urls`; `None` when the API never answers
    /// with URLs (the rows on result URLs are skipped).
    fn answer_urls(&self, urls: &[String]) -> Option<Reply>;

    /// A streamed answer to a request with partial images that breaks off mid-stream;
    /// `None` when the provider does not stream (the row is skipped).
    fn answer_broken_stream(&self) -> Option<Reply>;
}
