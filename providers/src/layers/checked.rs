//! Validation against the catalog, once, before any call reaches a provider.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    validate, CallOptions, Catalog, EditRequest, GenerateRequest, GenerateResult, ImageProvider,
    ModelCapabilities, ModerationInput, ModerationVerdict, ProviderError, UpstreamModel,
    VariationRequest,
};

/// Checks every request against what its model can do (per the inner provider's
/// capabilities) before passing it on; a refused request costs no upstream call.
#[derive(Debug, Clone)]
pub struct Checked {
    inner: Arc<dyn ImageProvider>,
    catalog: Arc<Catalog>,
}

impl Checked {
    /// Wraps `inner`; `catalog` names the models that can make variations when one cannot.
    pub fn new(inner: Arc<dyn ImageProvider>, catalog: Arc<Catalog>) -> Self {
        Self { inner, catalog }
    }

    /// The provider requests pass on to.
    pub fn inner(&self) -> &Arc<dyn ImageProvider> {
        &self.inner
    }
}

#[async_trait]
impl ImageProvider for Checked {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        self.inner.capabilities(model)
    }

    fn lifecycle_is_authoritative(&self) -> bool {
        self.inner.lifecycle_is_authoritative()
    }

    fn aliases(&self) -> Vec<(String, String)> {
        self.inner.aliases()
    }

    fn stand_in_notice(&self) -> Option<String> {
        self.inner.stand_in_notice()
    }

    async fn list_models(&self) -> Result<Vec<UpstreamModel>, ProviderError> {
        self.inner.list_models().await
    }

    fn moderates(&self) -> bool {
        self.inner.moderates()
    }

    async fn moderate(
        &self,
        input: &ModerationInput,
        options: &CallOptions,
    ) -> Result<ModerationVerdict, ProviderError> {
        // Nothing to check against the catalog: the input is a prompt and images.
        self.inner.moderate(input, options).await
    }

    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        validate::check(request, &self.inner.capabilities(&request.model))?;
        self.inner.generate_opts(request, options).await
    }

    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        validate::check_edit(request, &self.inner.capabilities(&request.model))?;
        validate::check_edit_images(request)?;
        self.inner.edit_opts(request, options).await
    }

    async fn variation_opts(
        &self,
        request: &VariationRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let caps = self.inner.capabilities(&request.model);
        validate::check_variation(request, &caps, &self.catalog.variation_models())?;
        validate::check_variation_image(request)?;
        self.inner.variation_opts(request, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mock::{MockProvider, MockSettings, MOCK_MODEL},
        ErrorKind, ImageFormat, ImageProviderExt as _, InputImage,
    };

    fn checked() -> Checked {
        Checked::new(
            Arc::new(MockProvider::new(MockSettings::default())),
            Arc::new(Catalog::for_kind(crate::mock::catalog_entries())),
        )
    }

    #[tokio::test]
    async fn requests_the_model_cannot_serve_are_refused_before_the_provider() {
        let p = checked();
        let mut bad_size = GenerateRequest::new("x", MOCK_MODEL);
        bad_size.options.size = Some("7x7".into());
        let err = p.generate(&bad_size).await.unwrap_err();
        assert_eq!(
            (err.kind, err.param.as_deref()),
            (ErrorKind::InvalidRequest, Some("size"))
        );
        let mut ok = GenerateRequest::new("x", MOCK_MODEL);
        ok.options.size = Some("32x32".into());
        assert_eq!(p.generate(&ok).await.unwrap().images.len(), 1);

        let png = p.generate(&ok).await.unwrap().images[0].bytes.clone();
        let image = InputImage::new(png, ImageFormat::Png, "in.png");
        let err = p
            .variation(&VariationRequest::new("gpt-image-1.5", image.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.message.contains("dall-e-2, mock-image-1"), "{err}");
        let edit = EditRequest::new("x", "dall-e-3", vec![image]);
        assert_eq!(
            p.edit(&edit).await.unwrap_err().kind,
            ErrorKind::Unsupported
        );
    }
}
