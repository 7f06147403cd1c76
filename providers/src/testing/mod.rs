//! The conformance suite as a library, for every provider's tests (feature `testing`).
//!
//! - [`conformance`]: the happy path, against whatever upstream the caller set up.
//! - [`error_rows`]: 401, 403, 429 with `Retry-After`, 5xx, a content-policy refusal, a
//!   malformed body, a timeout after the request was sent and a broken stream, each checked
//!   for kind, status, `retry_after` and no key in the error.
//! - [`hostile_rows`]: an upstream that echoes the key in every field, asks for absurd waits,
//!   sends more images than asked for, or points at results on other hosts.
//!
//! The rows run against a [`imagegen_testkit::FakeUpstream`] the suite starts; the provider
//! says how to build itself against it ([`StubTarget`]) and how to write each answer in its
//! wire format ([`ConformanceStub`]). The suite asserts (panics) like any test.

mod rows;
mod stub;
mod suite;

pub use rows::{
    assert_no_sentinel, error_rows, hostile_rows, Build, SENTINEL_KEY, SENTINEL_PASSWORD,
};
pub use stub::{ConformanceStub, Fault, StubTarget};
pub use suite::{assert_images, conformance};
