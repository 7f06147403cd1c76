//! Decorators that implement [`ImageProvider`](crate::ImageProvider) over an inner provider,
//! adding one behaviour each, so it is written once for every provider:
//!
//! - [`Checked`]: validates each request against the model's catalog entry before any paid
//!   call, in one place (providers do not check again).
//! - [`Chaos`]: injects latency and scripted or random faults, so fault tests can wrap a real
//!   provider against its stub (the mock's `fail_sequence` knobs are this layer).

mod chaos;
mod checked;

pub use chaos::{Chaos, ChaosSettings};
pub use checked::Checked;
