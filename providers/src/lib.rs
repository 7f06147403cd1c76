//! Image generation providers behind one async trait.
//!
//! This crate knows nothing of MCP, files on disk or configuration files: it turns a
//! [`GenerateRequest`] into a [`GenerateResult`] or a [`ProviderError`], and describes what
//! each model can do so requests can be checked before any paid call is made.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod catalog;
pub mod error;
pub mod image_info;
pub mod mock;
pub mod openai;
pub mod retry;
pub mod secret;
pub mod types;
pub mod validate;

use std::fmt::Debug;

use async_trait::async_trait;

pub use catalog::{Catalog, ModelCapabilities, ModelOverride, Param, SizeRule};
pub use error::{ErrorKind, ProviderError};
pub use secret::fingerprint;
pub use types::{GenerateRequest, GenerateResult, GeneratedImage, ImageFormat, Usage};

/// A source of generated images: one configured provider instance (an OpenAI account, the mock, ...).
#[async_trait]
pub trait ImageProvider: Send + Sync + Debug {
    /// The provider kind as written in configuration (`openai`, `mock`, ...).
    fn kind(&self) -> &'static str;

    /// The model used when a request names none.
    fn default_model(&self) -> &str;

    /// The models this provider advertises, in display order.
    fn models(&self) -> Vec<String>;

    /// What `model` can do; unknown models get only the checks that always hold.
    fn capabilities(&self, model: &str) -> ModelCapabilities;

    /// Generates images; `request.model` is always set and already validated.
    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResult, ProviderError>;
}
