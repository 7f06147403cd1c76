//! A moderation check of a prompt (and of an edit's input images) before anything is paid
//! for: what is sent ([`ModerationInput`]) and what the provider's classifier answered
//! ([`ModerationVerdict`]). Providers with a moderation endpoint implement
//! [`ImageProvider::moderate`](crate::ImageProvider::moderate); the others refuse it.

use crate::InputImage;

/// The moderation model used when the input names none: OpenAI's current one, which also
/// classifies images.
pub const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";

/// What a moderation check classifies: a prompt, and the images an edit would send.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ModerationInput {
    /// The prompt as it would go upstream.
    pub text: String,
    /// Input images to classify with it (an edit's); empty for a generation.
    pub images: Vec<InputImage>,
    /// The moderation model; `None`: [`DEFAULT_MODERATION_MODEL`].
    pub model: Option<String>,
}

impl ModerationInput {
    /// A check of `text` alone with the default model.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// Classifies `images` too.
    pub fn with_images(mut self, images: Vec<InputImage>) -> Self {
        self.images = images;
        self
    }

    /// Uses the moderation model `model`.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The model to ask: the one named, else [`DEFAULT_MODERATION_MODEL`].
    pub fn model(&self) -> &str {
        self.model
            .as_deref()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or(DEFAULT_MODERATION_MODEL)
    }
}

/// What the moderation classifier said about a [`ModerationInput`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModerationVerdict {
    /// Whether any part of the input was flagged.
    pub flagged: bool,
    /// The flagged categories (`violence`, `harassment/threatening`, ...), in the order the
    /// provider listed them, each once; names that are not plain tokens read as `other`.
    pub categories: Vec<String>,
    /// The model that classified the input, as the provider named it.
    pub model: String,
    /// The provider's request id (of the flagged request, when one was), for its support.
    pub request_id: Option<String>,
}

impl ModerationVerdict {
    /// A verdict of `model`: flagged when `categories` is not empty, or when `flagged` says so.
    pub fn new(flagged: bool, categories: Vec<String>, model: impl Into<String>) -> Self {
        Self {
            flagged: flagged || !categories.is_empty(),
            categories,
            model: model.into(),
            request_id: None,
        }
    }

    /// Names the provider's request id.
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }
}
