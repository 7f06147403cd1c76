//! Decorators that implement [`ImageProvider`](crate::ImageProvider) over an inner provider,
//! adding one behaviour each, so it is written once for every provider:
//!
//! - [`Checked`]: validates each request against the model's catalog entry before any paid
//!   call, in one place (providers do not check again).
//! - [`Limited`]: bounds calls in flight (a provider's own `max_in_flight`, and one [`Limit`]
//!   shared by every provider for the server's), saying so while a call waits.
//! - [`Chaos`]: injects latency and scripted or random faults, so fault tests can wrap a real
//!   provider against its stub (the mock's `fail_sequence` knobs are this layer).

mod chaos;
mod checked;
mod limited;

pub use chaos::{Chaos, ChaosSettings};
pub use checked::Checked;
pub use limited::{Limit, Limited};
