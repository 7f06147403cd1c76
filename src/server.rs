//! The MCP server: `generate_image`, `list_providers`, and the stored images as resources.

use std::sync::Arc;

use base64::Engine as _;
use imagegen_providers::ModelCapabilities;
use rmcp::{
    handler::server::{router::tool::ToolRouter, tool::schema_for_output, wrapper::Parameters},
    model::{
        CallToolResult, ContentBlock, Implementation, ListResourcesResult, PaginatedRequestParams,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
        ResourceContents, ServerCapabilities, ServerConfig,
    },
    service::RequestContext,
    tool, tool_handler, tool_router, ErrorData as McpError, Json, RoleServer, ServerHandler,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    delivery::{describe, plan_inline, GenerateOutput},
    engine::{Engine, GenerateParams, Generation},
    error::ToolError,
    storage::ImageStore,
};

/// One model as `list_providers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    /// The model name to pass as `model`.
    pub name: String,
    /// What it can do, as checked before each call.
    #[schemars(with = "serde_json::Value")]
    pub capabilities: ModelCapabilities,
}

/// One provider as `list_providers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProviderInfo {
    /// The name to pass as `provider`.
    pub name: String,
    /// The implementation (`openai`, `mock`, ...).
    pub kind: String,
    /// Whether calls without `provider` go here.
    pub default: bool,
    /// The model used when a call names none.
    pub default_model: String,
    /// The models it offers.
    pub models: Vec<ModelInfo>,
}

/// The result of `list_providers`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProvidersOutput {
    /// The provider used when a call names none.
    pub default_provider: String,
    /// Every configured provider.
    pub providers: Vec<ProviderInfo>,
}

/// The MCP server over one [`Engine`].
#[derive(Debug, Clone)]
pub struct ImagegenServer {
    engine: Arc<Engine>,
    tool_router: ToolRouter<Self>,
}

/// Describes every configured provider and its models.
pub fn providers_output(engine: &Engine) -> ProvidersOutput {
    let providers = engine
        .providers()
        .iter()
        .map(|(name, entry)| {
            let p = &entry.provider;
            let mut models = p.models();
            if !models.iter().any(|m| m == p.default_model()) {
                models.insert(0, p.default_model().to_string());
            }
            ProviderInfo {
                name: name.clone(),
                kind: p.kind().into(),
                default: name == engine.default_provider(),
                default_model: p.default_model().into(),
                models: models
                    .into_iter()
                    .map(|m| ModelInfo {
                        capabilities: p.capabilities(&m),
                        name: m,
                    })
                    .collect(),
            }
        })
        .collect();
    ProvidersOutput {
        default_provider: engine.default_provider().into(),
        providers,
    }
}

fn error_result(error: ToolError) -> CallToolResult {
    let text = error.human();
    let structured = serde_json::to_value(GenerateOutput::failure(error)).unwrap_or_default();
    let mut result = CallToolResult::structured_error(structured);
    result.content.insert(0, ContentBlock::text(text));
    result
}

fn success_result(
    engine: &Engine,
    generation: &Generation,
    params: &GenerateParams,
) -> CallToolResult {
    let mode = params.delivery.unwrap_or(engine.output().delivery);
    let images: Vec<_> = generation.images.iter().map(|(_, img)| img).collect();
    let plans = plan_inline(&images, mode, engine.output().preview_budget_bytes);
    let count = generation.images.len();
    let mut content = Vec::with_capacity(count * 3 + 2);
    let mut summary = format!(
        "Generated {count} image{} with {} ({}).",
        if count == 1 { "" } else { "s" },
        generation.provider,
        generation.model
    );
    if let Some(revised) = &generation.revised_prompt {
        summary.push_str(&format!(" The provider revised the prompt to: {revised}"));
    }
    content.push(ContentBlock::text(summary));
    for (i, ((stored, _), plan)) in generation.images.iter().zip(&plans).enumerate() {
        content.push(ContentBlock::text(describe(i, count, stored, plan)));
        if let Some(inline) = &plan.inline {
            content.push(ContentBlock::image(inline.base64.clone(), inline.mime));
        }
        content.push(ContentBlock::resource_link(
            Resource::new(stored.uri.clone(), stored.name.clone())
                .with_mime_type(stored.mime.clone())
                .with_size(stored.bytes)
                .with_description(format!(
                    "{}x{} generated image",
                    stored.width, stored.height
                )),
        ));
    }
    let structured = serde_json::to_value(GenerateOutput::success(generation)).unwrap_or_default();
    // Older clients ignore structuredContent; the same JSON as text keeps them informed.
    content.push(ContentBlock::text(structured.to_string()));
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(structured);
    result
}

#[tool_router]
impl ImagegenServer {
    /// A server answering from `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            tool_router: Self::tool_router(),
        }
    }

    /// Generates images from a text prompt.
    #[tool(
        name = "generate_image",
        description = "Generate images from a text prompt. Each image is saved on the server and returned as a resource link (full resolution, readable with resources/read) plus a small inline preview. Call list_providers to see the providers, models, sizes and qualities available. Generation can take 10-120 seconds.",
        output_schema = schema_for_output::<GenerateOutput>(),
        annotations(
            title = "Generate image",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn generate_image(
        &self,
        Parameters(params): Parameters<GenerateParams>,
    ) -> CallToolResult {
        match self.engine.generate(&params).await {
            Ok(generation) => {
                let engine = self.engine.clone();
                // Previews decode and re-encode megapixel images: keep that off the async workers.
                tokio::task::spawn_blocking(move || success_result(&engine, &generation, &params))
                    .await
                    .unwrap_or_else(|e| {
                        error_result(ToolError::storage(format!(
                            "building the result failed: {e}"
                        )))
                    })
            }
            Err(error) => {
                tracing::warn!(kind = %error.kind, provider = ?error.provider, "generate_image failed: {}", error.message);
                error_result(error)
            }
        }
    }

    /// Lists providers, models and what each model accepts.
    #[tool(
        name = "list_providers",
        description = "List the configured image providers, which one is the default, their models, and what each model accepts (sizes, qualities, formats, n, prompt length, parameters).",
        annotations(
            title = "List providers",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_providers(&self) -> Json<ProvidersOutput> {
        Json(providers_output(&self.engine))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ImagegenServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Image generation. Call generate_image with a prompt; results link to the saved full image (imagegen://images/...) and include a small preview. Use list_providers to see models and the sizes they accept.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let store = self.engine.store().clone();
        let entries = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?
            .map_err(|e| McpError::internal_error(format!("cannot list images: {e}"), None))?;
        Ok(ListResourcesResult::with_all_items(
            entries
                .into_iter()
                .map(|e| {
                    Resource::new(
                        format!("{}{}", crate::storage::IMAGE_URI_PREFIX, e.name),
                        e.name,
                    )
                    .with_mime_type(e.mime)
                    .with_size(e.bytes)
                })
                .collect(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let name = ImageStore::name_from_uri(&uri)
            .ok_or_else(|| McpError::resource_not_found(format!("no such resource: {uri}"), None))?
            .to_owned();
        let store = self.engine.store().clone();
        let read = tokio::task::spawn_blocking(move || store.read(&name))
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let (bytes, mime) = read.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                McpError::resource_not_found(format!("no such resource: {uri}"), None)
            }
            _ => McpError::internal_error(format!("cannot read {uri}: {e}"), None),
        })?;
        let blob = base64::engine::general_purpose::STANDARD.encode(bytes);
        Ok(
            ReadResourceResult::new(vec![ResourceContents::blob(blob, uri).with_mime_type(mime)])
                .into(),
        )
    }
}
