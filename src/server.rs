//! The MCP server: `generate_image`, `list_providers`, the stored images as resources, and
//! `imagegen://status`.
//!
//! Every request reads the live configuration once, at its start, and keeps that snapshot to
//! its end: a reload in the meantime changes what the next request sees, not this one.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use std::collections::BTreeMap;

use base64::Engine as _;
use imagegen_providers::{GeneratedImage, ModelCapabilities};
use rmcp::{
    handler::server::{
        router::tool::ToolRouter,
        tool::{schema_for_output, InputResponses, RequestState},
    },
    model::{
        CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, CreateTaskResult,
        GetTaskParams, GetTaskResult, Implementation, JsonObject, ListResourceTemplatesResult,
        ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
        ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, SubscriptionFilter,
    },
    service::{NotificationContext, RequestContext, SubscriptionContext},
    tool, tool_handler, tool_router, ErrorData as McpError, Json, Peer, RoleServer, ServerHandler,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument as _;

use crate::routing::{HealthStatus, RouteConfig};
use crate::{
    args::{input_schema, Args},
    batch::{self, BatchOutput, BatchParams},
    caller_limits::{CallerLimiter, EffectiveLimits},
    config::{Delivery, PresetConfig},
    confirm,
    delivery::InlinePlan,
    delivery::{describe, plan_inline, GenerateOutput},
    engine::{
        CallContext, EditInputs, EditParams, Engine, GenerateParams, Generation, Origin,
        VariationParams,
    },
    error::ToolError,
    inputs::InputRole,
    lifecycle::{self, ModelRow, ModelStanding, UpstreamCheck},
    live::{ConfigStatus, Live},
    progress::{ProgressReporter, ProgressSink},
    storage::index::{self, FindPage, FindParams, FoundImage},
    storage::{self, ImageStore, StoreError, StoreErrorKind, StoredImage, Viewer},
    tasks::{TaskError, TaskProgress, Tasks},
};

/// The tools that answer with a task when the client declares the tasks extension.
pub const TASK_TOOLS: [&str; 4] = [
    "generate_image",
    "generate_images",
    "edit_image",
    "create_variation",
];

/// The URI of the live status resource.
pub const STATUS_URI: &str = "imagegen://status";
/// The resource with today's and this month's spend.
pub const USAGE_URI: &str = "imagegen://usage";

/// One API key as status views show it: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyInfo {
    /// A safe hint of the key, such as `sk-…abcd`.
    pub fingerprint: String,
    /// Where it came from (`file /etc/imagegen.toml`, `api_key_file /run/secrets/openai`, `env OPENAI_API_KEY`, ...).
    pub source: String,
    /// `active`, `cooling_down` (rate limited) or `disabled` (rejected, no quota or billing).
    pub state: String,
    /// When a cooling-down key is usable again, or a disabled key is tried again (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Seconds until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usable_in_s: Option<u64>,
    /// Why the key is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One provider's keys and their state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderStatus {
    /// The provider's name.
    pub name: String,
    /// The implementation (`openai`, `mock`, ...).
    pub kind: String,
    /// Whether calls without `provider` go here.
    pub default: bool,
    /// Its API keys (none for providers without keys).
    pub keys: Vec<KeyInfo>,
    /// The providers its calls move to when it fails, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// What its recent calls say (see `list_providers`).
    pub health: HealthStatus,
}

/// The content of `imagegen://status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusOutput {
    /// The configuration in force and the reload history.
    #[serde(flatten)]
    pub config: ConfigStatus,
    /// The provider used when a call names none.
    pub default_provider: String,
    /// Upstream calls in flight now, all providers together.
    pub in_flight: usize,
    /// `[limits] max_in_flight`: calls beyond it wait for a slot.
    pub max_in_flight: usize,
    /// Every configured provider and its keys.
    pub providers: Vec<ProviderStatus>,
    /// Models that are not plainly active: deprecated, shut down, or reported missing by a
    /// provider, with what the catalog and the providers say about each.
    pub model_lifecycle: Vec<ModelRow>,
    /// The last comparison of each provider's model listing with the catalog.
    pub upstream_checks: Vec<UpstreamCheck>,
    /// `[budget]` and `[cluster]`: where the counts live, the local spend of each limit, and
    /// the shared Redis's state; absent without budgets or a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<crate::budget::BudgetStatus>,
}

/// The keys of `engine`'s provider `name` and what is known about each.
fn key_info(engine: &Engine, name: &str) -> Vec<KeyInfo> {
    let Some(pool) = engine.providers().get(name).and_then(|e| e.keys.as_ref()) else {
        return Vec::new();
    };
    let now = time::OffsetDateTime::now_utc();
    pool.status()
        .into_iter()
        .map(|k| KeyInfo {
            until: k.usable_in_s.map(|s| {
                crate::clock::rfc3339(now + time::Duration::seconds(s.min(i64::MAX as u64) as i64))
            }),
            fingerprint: k.fingerprint,
            source: k.source,
            state: k.state.to_string(),
            usable_in_s: k.usable_in_s,
            reason: k.reason,
        })
        .collect()
}

/// The live status: reload history, and every provider's keys with their state.
pub fn status_output(live: &Live) -> StatusOutput {
    let engine = live.engine();
    let (in_flight, max_in_flight) = engine.in_flight();
    StatusOutput {
        config: live.status(),
        default_provider: engine.default_provider().into(),
        in_flight,
        max_in_flight,
        providers: engine
            .providers()
            .iter()
            .map(|(name, entry)| ProviderStatus {
                name: name.clone(),
                kind: entry.provider.kind().into(),
                default: name == engine.default_provider(),
                keys: key_info(&engine, name),
                fallback: entry.fallback.clone(),
                health: engine.health(name),
            })
            .collect(),
        model_lifecycle: lifecycle::model_rows(&engine, None)
            .into_iter()
            .filter(|row| row.standing.state != "active" || row.standing.upstream_missing.is_some())
            .collect(),
        upstream_checks: engine.watch().checks(),
        budgets: engine.budgets().status(),
    }
}

/// One model as `list_providers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    /// The model name to pass as `model`.
    pub name: String,
    /// What it can do, as checked before each call.
    #[schemars(with = "serde_json::Value")]
    pub capabilities: ModelCapabilities,
    /// Its lifecycle today: state, shutdown date, replacement.
    #[serde(flatten)]
    pub lifecycle: ModelStanding,
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
    /// Names usable as `model` for other models (`fast`, `best`, ...), by alias.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// The models it offers.
    pub models: Vec<ModelInfo>,
    /// Its API keys as fingerprints, with their source and state (none for providers without keys).
    pub keys: Vec<KeyInfo>,
    /// The providers its calls move to when it fails, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// What its recent calls say: `healthy`, `degraded`, `open` (skipped while another
    /// provider can serve) or `half_open`.
    pub health: HealthStatus,
}

/// The result of `list_providers`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProvidersOutput {
    /// The provider used when a call names none.
    pub default_provider: String,
    /// Every configured provider.
    pub providers: Vec<ProviderInfo>,
    /// Named lists of providers tried in order, usable as `provider`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Prompt presets, usable as `preset`: each one's template (`{prompt}` is the call's
    /// prompt), description, provider, model and options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub presets: BTreeMap<String, PresetConfig>,
    /// The configuration in force and the reload history.
    pub config: ConfigStatus,
    /// The Redis the replicas share budgets through (`connected`, or `down` since when) and
    /// what paid calls do while it is down; absent without `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterStatus>,
}

/// The result of `find_images`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct FindImagesOutput {
    /// The images found, newest first, with what their sidecars record.
    pub images: Vec<FoundImage>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Why the search failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

impl From<FindPage> for FindImagesOutput {
    fn from(page: FindPage) -> Self {
        Self {
            images: page.images,
            next_cursor: page.next_cursor,
            error: None,
        }
    }
}

/// Whose images a request may see: over HTTP the caller's own, unless `storage.shared`;
/// over stdio (one user) everyone's.
fn owner_filter(context: &RequestContext<RoleServer>, shared: bool) -> Option<String> {
    if shared {
        return None;
    }
    caller(context)
}

/// The tool result of `find_images`: a line for people, a resource link per image, and the
/// facts as structured content.
fn find_result(outcome: Result<FindPage, ToolError>) -> CallToolResult {
    let output = match outcome {
        Ok(page) => FindImagesOutput::from(page),
        Err(error) => {
            let output = FindImagesOutput {
                error: Some(error.clone()),
                ..FindImagesOutput::default()
            };
            return failure_result(&error, &output);
        }
    };
    let mut summary = match output.images.len() {
        0 => "No stored image matches.".to_string(),
        1 => "Found 1 image.".to_string(),
        n => format!("Found {n} images, newest first."),
    };
    if output.next_cursor.is_some() {
        summary.push_str(" More match: call again with `cursor` set to `next_cursor`.");
    }
    let mut content = vec![ContentBlock::text(summary)];
    for image in &output.images {
        let made_with = image.model.as_deref().unwrap_or("unknown model");
        let mut about = format!("{} image, {made_with}, {}", image.size, image.created);
        if !image.prompt.is_empty() {
            let prompt: String = image.prompt.chars().take(200).collect();
            about.push_str(&format!(": {prompt}"));
        }
        content.push(ContentBlock::resource_link(
            Resource::new(image.uri.clone(), image.name.clone())
                .with_mime_type(image.mime.clone())
                .with_size(image.bytes)
                .with_description(about),
        ));
    }
    let structured = serde_json::to_value(&output).unwrap_or_default();
    content.push(ContentBlock::text(structured.to_string()));
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(structured);
    result
}

/// The MCP server over the live configuration.
#[derive(Debug, Clone)]
pub struct ImagegenServer {
    live: Arc<Live>,
    tool_router: ToolRouter<Self>,
    calls: Arc<Calls>,
    /// Each caller's calls and allowance under `[server.limits.per_caller]`; kept across reloads.
    limiter: Arc<CallerLimiter>,
    /// The MCP tasks running in this process.
    tasks: Arc<Tasks>,
}

/// The tool calls running now, shared by every clone of a server: a graceful shutdown waits
/// for them to finish.
#[derive(Debug, Default)]
pub struct Calls {
    running: AtomicUsize,
    idle: Notify,
}

impl Calls {
    /// How many tool calls are running.
    pub fn in_flight(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Resolves once no tool call is running.
    pub async fn idle(&self) {
        loop {
            // Created before the check, so a call ending in between still wakes it.
            let ended = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Counts one more running; it ends when the guard is dropped.
    pub fn start(self: &Arc<Self>) -> CallGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }
}

/// One running call; dropping it (the call ended, however) counts it out.
#[derive(Debug)]
pub struct CallGuard(Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Describes every configured provider, its models and keys, and the configuration in force.
pub fn providers_output(live: &Live) -> ProvidersOutput {
    let engine = live.engine();
    let providers = engine
        .providers()
        .iter()
        .map(|(name, entry)| {
            let catalog = engine.live_catalog_of(entry);
            let p = &entry.provider;
            let default_model = entry.default_model();
            let models = entry.offered_models();
            ProviderInfo {
                name: name.clone(),
                kind: p.kind().into(),
                default: name == engine.default_provider(),
                default_model,
                aliases: entry.aliases.clone(),
                models: models
                    .into_iter()
                    .map(|m| ModelInfo {
                        capabilities: p.capabilities(&m),
                        lifecycle: catalog.standing(&m),
                        name: m,
                    })
                    .collect(),
                keys: key_info(&engine, name),
                fallback: entry.fallback.clone(),
                health: engine.health(name),
            }
        })
        .collect();
    ProvidersOutput {
        default_provider: engine.default_provider().into(),
        providers,
        routes: engine.routes().clone(),
        presets: engine.presets().clone(),
        config: live.status(),
        cluster: engine.budgets().cluster_status(),
    }
}

fn error_result(error: ToolError) -> CallToolResult {
    failure_result(&error, &GenerateOutput::failure(error.clone()))
}

/// A batch refused as a whole, before any item ran.
fn batch_refused(error: ToolError) -> CallToolResult {
    failure_result(&error, &BatchOutput::failure(error.clone(), 0))
}

/// The one way a failed call is answered: the error for people first, and `structured` (the
/// tool's output with `error` set) for programs.
fn failure_result(error: &ToolError, structured: &impl Serialize) -> CallToolResult {
    let structured = serde_json::to_value(structured).unwrap_or_default();
    let mut result = CallToolResult::structured_error(structured);
    result.content.insert(0, ContentBlock::text(error.human()));
    result
}

fn success_result(engine: &Engine, generation: &Generation, mode: Delivery) -> CallToolResult {
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
    if let Some(preset) = &generation.preset {
        summary.push_str(&format!(
            " Preset `{preset}` shaped the prompt (see the notes)."
        ));
    }
    for note in &generation.notes {
        summary.push_str(&format!(" Note: {note}."));
    }
    if let Some(revised) = &generation.revised_prompt {
        summary.push_str(&format!(" The provider revised the prompt to: {revised}"));
    }
    content.push(ContentBlock::text(summary));
    for (i, ((stored, _), plan)) in generation.images.iter().zip(&plans).enumerate() {
        content.push(ContentBlock::text(describe(i, count, stored, plan)));
        if let Some(inline) = &plan.inline {
            content.push(ContentBlock::image(inline.base64.clone(), inline.mime));
        }
        content.push(resource_link(stored));
    }
    let structured = serde_json::to_value(GenerateOutput::success(generation)).unwrap_or_default();
    // Older clients ignore structuredContent; the same JSON as text keeps them informed.
    content.push(ContentBlock::text(structured.to_string()));
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(structured);
    result
}

/// How often a call with a progress token hears from the server at the least: under the
/// 5 s that clients and proxies with idle timeouts can be trusted to wait.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

/// The environment variable that sets the heartbeat in milliseconds instead of [`HEARTBEAT`]:
/// the end-to-end tests prove a long call's heartbeats at a scale that runs in seconds.
pub const HEARTBEAT_VAR: &str = "IMAGEGEN_HEARTBEAT_MS";

/// What the confirmation of a call's cost needs (see [`confirm`]).
struct CostCheck {
    threshold_usd: Option<f64>,
    estimate_usd: Option<f64>,
    confirmed: Option<bool>,
    what: String,
    state: RequestState,
    responses: InputResponses,
}

impl CostCheck {
    /// The check of a call on `engine`; `estimate_usd` runs only when a threshold is set,
    /// so calls pay for an estimate only where one is asked for.
    fn new(
        engine: &Engine,
        estimate_usd: impl FnOnce() -> Option<f64>,
        confirmed: Option<bool>,
        what: String,
        (state, responses): (RequestState, InputResponses),
    ) -> Self {
        let threshold_usd = engine.budgets().config().confirm_above_usd;
        Self {
            threshold_usd,
            estimate_usd: threshold_usd.and_then(|_| estimate_usd()),
            confirmed,
            what,
            state,
            responses,
        }
    }
}

/// What a call makes, for the confirmation question: `generate 4 images`.
fn images_of(n: Option<u32>, verb: &str) -> String {
    match n.unwrap_or(1) {
        1 => format!("{verb} 1 image"),
        n => format!("{verb} {n} images"),
    }
}

/// The heartbeat in use: [`HEARTBEAT`], or a positive whole number of milliseconds from
/// [`HEARTBEAT_VAR`] (anything else there is ignored), read once.
fn heartbeat() -> Duration {
    static HEARTBEAT_IN_USE: OnceLock<Duration> = OnceLock::new();
    *HEARTBEAT_IN_USE.get_or_init(|| {
        std::env::var(HEARTBEAT_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(HEARTBEAT, Duration::from_millis)
    })
}

/// Sends progress notifications for one request to the MCP client that asked for them.
struct PeerProgress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
}

#[async_trait::async_trait]
impl ProgressSink for PeerProgress {
    async fn send(&self, progress: f64, message: String) {
        let note =
            ProgressNotificationParam::new(self.token.clone(), progress).with_message(message);
        if let Err(e) = self.peer.notify_progress(note).await {
            tracing::debug!("progress notification not sent: {e}");
        }
    }
}

/// Where a call running as a task reports its progress: the task's status message.
#[derive(Clone)]
struct TaskSink(Arc<dyn ProgressSink>);

/// Progress reporting for a request: to its task when it runs as one, to its client when it
/// sent a progress token, else nowhere.
fn reporter(context: &RequestContext<RoleServer>) -> ProgressReporter {
    if let Some(TaskSink(sink)) = context.extensions.get::<TaskSink>() {
        return ProgressReporter::start(Some(sink.clone()), heartbeat());
    }
    let sink = context.meta.get_progress_token().map(|token| {
        Arc::new(PeerProgress {
            peer: context.peer.clone(),
            token,
        }) as Arc<dyn ProgressSink>
    });
    ProgressReporter::start(sink, heartbeat())
}

/// Builds a tool result off the async workers, one per core at a time: previews decode and
/// re-encode whole images, and a bound keeps memory flat under load. Links alone are built
/// in place: there is nothing to decode, and a thread hop would be most of their cost.
async fn with_previews(
    mode: Delivery,
    build: impl FnOnce() -> CallToolResult + Send + 'static,
) -> CallToolResult {
    if mode == Delivery::Link {
        return build();
    }
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| Semaphore::new(imagegen_providers::http::available_cores()));
    let Ok(_slot) = slots.acquire().await else {
        return error_result(ToolError::storage("the server is shutting down"));
    };
    tokio::task::spawn_blocking(build)
        .await
        .unwrap_or_else(|e| {
            error_result(ToolError::storage(format!(
                "building the result failed: {e}"
            )))
        })
}

/// The caller of a request that came over HTTP (the name of its token), if it did.
fn caller(context: &RequestContext<RoleServer>) -> Option<String> {
    let parts = context.extensions.get::<axum::http::request::Parts>()?;
    Some(parts.extensions.get::<crate::http::Caller>()?.0.clone())
}

/// Who a call is for limits and metrics: the HTTP caller, else (stdio, or HTTP without
/// tokens) the single local user, [`crate::http::ANONYMOUS`].
fn caller_name(context: &RequestContext<RoleServer>) -> String {
    caller(context).unwrap_or_else(|| crate::http::ANONYMOUS.to_string())
}

/// The id of the HTTP request that carried a call, if it came over HTTP.
fn request_id(context: &RequestContext<RoleServer>) -> Option<String> {
    let parts = context.extensions.get::<axum::http::request::Parts>()?;
    Some(parts.extensions.get::<crate::http::RequestId>()?.0.clone())
}

/// Runs one tool call with progress reporting (when the client asked for it) and the
/// client's cancellation; progress stops before the result is returned. Its logs carry the
/// caller (over HTTP) and it counts as running until it ends.
async fn with_progress<F, Fut>(
    calls: &Arc<Calls>,
    engine: &Engine,
    tool: &'static str,
    context: RequestContext<RoleServer>,
    work: F,
) -> CallToolResult
where
    F: FnOnce(CallContext) -> Fut,
    Fut: std::future::Future<Output = CallToolResult>,
{
    let running = calls.start();
    metrics::gauge!(crate::telemetry::TOOL_CALLS_IN_FLIGHT).set(calls.in_flight() as f64);
    let span = tracing::info_span!(
        "call",
        tool,
        caller = tracing::field::Empty,
        request_id = tracing::field::Empty
    );
    if let Some(caller) = caller(&context) {
        span.record("caller", tracing::field::display(&caller));
    }
    if let Some(id) = request_id(&context) {
        span.record("request_id", tracing::field::display(&id));
    }
    let caller = caller_name(&context);
    let result = run_call(context, tool, work).instrument(span).await;
    drop(running);
    metrics::gauge!(crate::telemetry::TOOL_CALLS_IN_FLIGHT).set(calls.in_flight() as f64);
    count_call(engine, tool, &caller, &result);
    result
}

/// The bytes of a tool result's content as sent (text and base64 data), for
/// `imagegen_tool_result_bytes_total`.
fn result_bytes(result: &CallToolResult) -> usize {
    result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(t) => t.text.len(),
            ContentBlock::Image(i) => i.data.len(),
            _ => 0,
        })
        .sum()
}

/// Counts a finished call in `imagegen_tool_calls_total` by tool, provider, model, outcome
/// (`ok` or the error's kind) and caller, and the bytes it returned; every label comes from
/// the configuration or a fixed set, so the series stay few.
fn count_call(engine: &Engine, tool: &'static str, caller: &str, result: &CallToolResult) {
    let structured = result.structured_content.as_ref();
    let field = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_str)
            .unwrap_or("none")
            .to_string()
    };
    let provider = field(structured.and_then(|s| s.get("provider")));
    let model = structured
        .and_then(|s| s.get("model").or_else(|| s.pointer("/error/model")))
        .and_then(serde_json::Value::as_str)
        .map_or_else(|| "none".to_string(), |m| engine.metric_model(&provider, m));
    let outcome = if result.is_error == Some(true) {
        field(structured.and_then(|s| s.pointer("/error/kind")))
    } else {
        "ok".to_string()
    };
    metrics::counter!(
        crate::telemetry::TOOL_CALLS,
        "tool" => tool,
        "provider" => provider,
        "model" => model,
        "outcome" => outcome,
        "caller" => crate::telemetry::caller_label(caller)
    )
    .increment(1);
    metrics::counter!(crate::telemetry::TOOL_RESULT_BYTES, "tool" => tool)
        .increment(result_bytes(result) as u64);
}

async fn run_call<F, Fut>(
    context: RequestContext<RoleServer>,
    tool: &'static str,
    work: F,
) -> CallToolResult
where
    F: FnOnce(CallContext) -> Fut,
    Fut: std::future::Future<Output = CallToolResult>,
{
    use futures::FutureExt as _;
    let reporter = reporter(&context);
    let call = CallContext {
        progress: reporter.handle(),
        cancel: context.ct.clone(),
        origin: Origin {
            caller: caller(&context),
            tool: Some(tool.to_string()),
            viewer: Viewer::Everyone,
        },
    };
    // A bug must not leave the client waiting forever: a panicking call still gets an answer.
    // The payload is not quoted back, since it may hold values from the call.
    let result = std::panic::AssertUnwindSafe(work(call))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("a tool call panicked; answering it with an internal error");
            error_result(ToolError::internal(
                "internal error: the call failed unexpectedly (a bug in the server)",
            ))
        });
    reporter.finish().await;
    result
}

/// The tool result of one generation, edit or variation.
async fn single_result(
    engine: Arc<Engine>,
    outcome: Result<Generation, ToolError>,
    mode: Option<Delivery>,
    tool: &str,
) -> CallToolResult {
    match outcome {
        Ok(generation) => {
            let mode = mode.unwrap_or(engine.output().delivery);
            with_previews(mode, move || success_result(&engine, &generation, mode)).await
        }
        Err(error) => {
            tracing::warn!(kind = %error.kind, provider = ?error.provider, message = ?error.message, "{tool} failed");
            error_result(error)
        }
    }
}

/// Reads edit inputs off the async workers (they are files). With an object store, images
/// named by their `imagegen://` URI come from the store, as the caller may see them.
async fn read_inputs(
    engine: &Arc<Engine>,
    viewer: &Viewer,
    images: Vec<String>,
    mask: Option<String>,
    markup: Option<String>,
) -> Result<EditInputs, ToolError> {
    let policy = engine.inputs().clone();
    let store = engine.store();
    // A caller who sees only their own images reads stored images through the store, which
    // checks whose they are, and names no file on the server: the output directory holds
    // every caller's images.
    let restricted = matches!(viewer, Viewer::Caller(_));
    let mut stored: Vec<Option<Vec<u8>>> = Vec::new();
    let specs: Vec<&String> = images.iter().chain(&mask).chain(&markup).collect();
    for spec in &specs {
        let spec = spec.trim();
        let name = (!store.is_local() || restricted)
            .then(|| ImageStore::name_from_uri(spec))
            .flatten();
        if restricted
            && name.is_none()
            && !spec.starts_with("data:")
            && crate::inputs::looks_like_path(spec)
        {
            return Err(ToolError::new(
                imagegen_providers::ErrorKind::Permission,
                "over HTTP an input is the imagegen:// URI of one of your images, a data: URL or \
                 base64; file paths on the server are only for its local user (or with \
                 storage.shared = true)",
            ));
        }
        stored.push(match name {
            Some(name) => Some(
                store
                    .read(name, u64::MAX, viewer)
                    .await
                    .map_err(|e| match e.kind {
                        StoreErrorKind::Failed => ToolError::storage(e.message),
                        _ => ToolError::new(
                            imagegen_providers::ErrorKind::NotFound,
                            format!("no stored image `{name}`"),
                        ),
                    })?
                    .0
                    .to_vec(),
            ),
            None => None,
        });
    }
    tokio::task::spawn_blocking(move || {
        let mut stored = stored.into_iter();
        let mut resolve = |spec: &str, role| match stored.next().flatten() {
            Some(bytes) => policy.resolve_stored(bytes, spec, role),
            None => policy.resolve(spec, role),
        };
        let images = images
            .iter()
            .enumerate()
            .map(|(i, spec)| resolve(spec, InputRole::Image(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mask = mask
            .map(|spec| resolve(&spec, InputRole::Mask))
            .transpose()?;
        let markup = markup
            .map(|spec| resolve(&spec, InputRole::Markup))
            .transpose()?;
        Ok(EditInputs {
            images,
            mask,
            markup,
        })
    })
    .await
    .unwrap_or_else(|e| Err(ToolError::storage(format!("reading inputs failed: {e}"))))
}

/// The tool result of a batch: every item in order, previews of all items within one budget.
fn batch_result(
    engine: &Engine,
    output: &BatchOutput,
    generations: &[Generation],
    mode: Delivery,
) -> CallToolResult {
    if let Some(error) = &output.error {
        return failure_result(error, output);
    }
    let structured = serde_json::to_value(output).unwrap_or_default();
    let all: Vec<(&StoredImage, &GeneratedImage)> = generations
        .iter()
        .flat_map(|g| g.images.iter().map(|(s, i)| (s, i)))
        .collect();
    let images: Vec<_> = all.iter().map(|(_, i)| *i).collect();
    let plans = plan_inline(&images, mode, engine.output().preview_budget_bytes);
    let by_uri: std::collections::HashMap<&str, (usize, &InlinePlan)> = all
        .iter()
        .zip(&plans)
        .enumerate()
        .map(|(i, ((s, _), p))| (s.uri.as_str(), (i, p)))
        .collect();
    let s = output.summary;
    let mut content = vec![ContentBlock::text(format!(
        "Batch: {} of {} items succeeded, {} failed, in {:.1} s.",
        s.succeeded,
        s.requested,
        s.failed,
        s.elapsed_ms as f64 / 1000.0
    ))];
    for item in &output.results {
        match &item.error {
            Some(error) => content.push(ContentBlock::text(format!(
                "Item {} ({:?}) failed: {}",
                item.index + 1,
                item.prompt,
                error.human()
            ))),
            None => {
                for stored in &item.images {
                    let Some(&(i, plan)) = by_uri.get(stored.uri.as_str()) else {
                        continue;
                    };
                    let preset = item
                        .preset
                        .as_ref()
                        .map(|p| format!(" (preset `{p}`)"))
                        .unwrap_or_default();
                    content.push(ContentBlock::text(format!(
                        "Item {}{preset}: {}",
                        item.index + 1,
                        describe(i, all.len(), stored, plan)
                    )));
                    if let Some(inline) = &plan.inline {
                        content.push(ContentBlock::image(inline.base64.clone(), inline.mime));
                    }
                    content.push(resource_link(stored));
                }
            }
        }
    }
    content.push(ContentBlock::text(structured.to_string()));
    let mut result = if s.succeeded == 0 {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    result.structured_content = Some(structured);
    result
}

/// A link to a stored image, readable with `resources/read`.
fn resource_link(stored: &StoredImage) -> ContentBlock {
    ContentBlock::resource_link(
        Resource::new(stored.uri.clone(), stored.name.clone())
            .with_mime_type(stored.mime.clone())
            .with_size(stored.bytes)
            .with_description(format!("{}x{} image", stored.width, stored.height)),
    )
}

/// The `format` values of the JSON Schema vocabulary (draft 2020-12); anything else is a
/// schemars extension that validating clients warn about.
pub const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// `schema` with every non-standard `format` removed (schemars writes `uint64`, `uint32`,
/// `double`, ...): an unsigned integer keeps its meaning as `minimum: 0`.
pub fn standard_schema(schema: &JsonObject) -> JsonObject {
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                let custom = map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .filter(|f| !STANDARD_FORMATS.contains(f))
                    .map(str::to_owned);
                if let Some(format) = custom {
                    map.remove("format");
                    if format.starts_with("uint") && !map.contains_key("minimum") {
                        map.insert("minimum".into(), 0.into());
                    }
                }
                map.values_mut().for_each(clean);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value = serde_json::Value::Object(schema.clone());
    clean(&mut value);
    match value {
        serde_json::Value::Object(map) => map,
        _ => schema.clone(),
    }
}

/// How often a 2025-11-25 session's notification task checks that its session still exists.
const SESSION_CHECK: Duration = Duration::from_secs(30);

/// Whose images a request may see: over HTTP its caller's own, unless `storage.shared` or the
/// caller's token is `admin`; over stdio (no caller) everything.
pub(crate) fn viewer(live: &Live, caller: Option<String>) -> Viewer {
    let Some(caller) = caller else {
        return Viewer::Everyone;
    };
    let snapshot = live.snapshot();
    let config = &snapshot.loaded.config;
    let admin = config
        .server
        .auth
        .tokens
        .iter()
        .any(|t| t.admin && t.name == caller);
    if config.storage.shared || admin {
        Viewer::Everyone
    } else {
        Viewer::Caller(caller)
    }
}

/// A store failure as an MCP error about `what`.
/// A task that cannot be read or cancelled, as the protocol error SEP-2663 asks for.
fn task_error(error: TaskError) -> McpError {
    match error {
        TaskError::Unknown(message) => McpError::invalid_params(message, None),
        TaskError::Store(message) => McpError::internal_error(message, None),
    }
}

fn store_error(error: StoreError, what: &str) -> McpError {
    match error.kind {
        StoreErrorKind::NotFound => {
            McpError::resource_not_found(format!("no such resource: {what}"), None)
        }
        StoreErrorKind::Refused => {
            McpError::invalid_params(format!("cannot serve {what}: {}", error.message), None)
        }
        StoreErrorKind::Failed => McpError::internal_error(error.message, None),
    }
}

/// The parameters of `delete_image`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct DeleteParams {
    /// The image to delete: its `imagegen://images/...` URI or its name.
    pub image: String,
}

/// What `delete_image` returns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeleteOutput {
    /// The name of the deleted image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    /// Why nothing was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

#[tool_router]
impl ImagegenServer {
    /// A server answering from the live configuration `live`.
    pub fn new(live: Arc<Live>) -> Self {
        let mut tool_router = Self::tool_router();
        crate::gallery::app::link_tools(&mut tool_router);
        for route in tool_router.map.values_mut() {
            let tool = &mut route.attr;
            tool.input_schema = Arc::new(standard_schema(&tool.input_schema));
            if let Some(output) = &tool.output_schema {
                tool.output_schema = Some(Arc::new(standard_schema(output)));
            }
            // SEP-2663 dropped the tool-level declaration of 2025-11-25 (`execution`), and
            // rmcp's `Tool` has no field for it: the listing says it in `_meta`.
            if TASK_TOOLS.contains(&tool.name.as_ref()) {
                tool.meta.get_or_insert_with(Default::default).insert(
                    rmcp::model::TASKS_EXTENSION_ID.into(),
                    serde_json::json!({"taskSupport": "optional"}),
                );
            }
        }
        Self {
            live,
            tool_router,
            calls: Arc::default(),
            limiter: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// The tool calls running now, across every clone of this server.
    pub fn calls(&self) -> Arc<Calls> {
        self.calls.clone()
    }

    /// Runs an image call of `tool` under its caller's own limits, then as [`with_progress`]
    /// does. A call over a limit is answered at once (shaped by `refused`) and never reaches
    /// the engine: no provider is chosen, no key cools down, no fallback is tried.
    async fn limited<F, Fut>(
        &self,
        tool: &'static str,
        context: RequestContext<RoleServer>,
        refused: fn(ToolError) -> CallToolResult,
        work: F,
    ) -> CallToolResult
    where
        F: FnOnce(CallContext) -> Fut,
        Fut: std::future::Future<Output = CallToolResult>,
    {
        // A cache hit may only answer with images this caller may see.
        let sees = viewer(&self.live, caller(&context));
        let caller = caller_name(&context);
        let snapshot = self.live.snapshot();
        let limits = EffectiveLimits::for_caller(&snapshot.loaded.config, &caller);
        let cluster = snapshot.engine.budgets().cluster().cloned();
        let admitted = match (self.limiter)
            .admit_shared(&caller, limits, cluster.as_ref())
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => {
                tracing::warn!(
                    caller,
                    tool,
                    limit = refusal.limit,
                    "refused a call over the caller's own limit"
                );
                let result = refused(refusal.into_tool_error());
                count_call(&snapshot.engine, tool, &caller, &result);
                return result;
            }
        };
        let engine = snapshot.engine.clone();
        drop(snapshot);
        let work = move |mut call: CallContext| {
            call.origin.viewer = sees;
            work(call)
        };
        let result = with_progress(&self.calls, &engine, tool, context, work).await;
        drop(admitted);
        result
    }

    /// Runs an image call: as a task when the client declared the tasks extension (and
    /// `tasks.enabled`), answered at once while the work goes on whatever becomes of the
    /// request; else inline, as for every other client.
    async fn dispatch<F, Fut>(
        &self,
        mut context: RequestContext<RoleServer>,
        work: F,
    ) -> CallToolResponse
    where
        F: FnOnce(RequestContext<RoleServer>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = CallToolResult> + Send + 'static,
    {
        let snapshot = self.live.snapshot();
        let config = snapshot.loaded.config.tasks.clone();
        let declared = context
            .client_capabilities()
            .is_some_and(|caps| caps.supports_tasks());
        if !(config.enabled && declared) {
            drop(snapshot);
            return work(context).await.into();
        }
        let store = snapshot.engine.store().clone();
        drop(snapshot);
        let owner = caller_name(&context);
        let (task, cancel) = match self.tasks.create(&owner, &store, &config, "starting").await {
            Ok(created) => created,
            Err(e) => {
                let message = match e {
                    TaskError::Unknown(m) | TaskError::Store(m) => m,
                };
                return error_result(ToolError::storage(format!(
                    "cannot start a task (its record could not be stored): {message}"
                )))
                .into();
            }
        };
        let id = task.task_id.clone();
        tracing::info!(task = %id, "answering with a task");
        // The task outlives its request: `tasks/cancel` ends it, not the request's end, and
        // its progress goes to the task's status.
        context.ct = cancel;
        context.extensions.insert(TaskSink(Arc::new(TaskProgress {
            tasks: self.tasks.clone(),
            id: id.clone(),
            persist_every: heartbeat() * 2,
        })));
        let tasks = self.tasks.clone();
        tokio::spawn(async move {
            let result = work(context).await;
            tasks.finish(&id, result).await;
        });
        CallToolResponse::Task(CreateTaskResult::new(task))
    }

    /// An image call from its start: the user's confirmation of its cost where it needs one
    /// (see [`confirm`]), then its work under the caller's limits, as a task or in the call
    /// (see [`Self::dispatch`]); `refused` shapes an error that ends it early.
    async fn image_call<F, Fut>(
        &self,
        tool: &'static str,
        cost: CostCheck,
        context: RequestContext<RoleServer>,
        refused: fn(ToolError) -> CallToolResult,
        work: F,
    ) -> CallToolResponse
    where
        F: FnOnce(CallContext) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = CallToolResult> + Send + 'static,
    {
        let spend = confirm::Spend {
            threshold_usd: cost.threshold_usd,
            estimate_usd: cost.estimate_usd,
            confirmed: cost.confirmed == Some(true),
            what: &cost.what,
        };
        let (state, responses) = (cost.state.0.as_deref(), cost.responses.0.as_ref());
        if let Err(refusal) = confirm::ask(spend, &context, state, responses).await {
            return refusal.into_response(refused);
        }
        let server = self.clone();
        self.dispatch(context, move |context| async move {
            server.limited(tool, context, refused, work).await
        })
        .await
    }

    /// Generates images from a text prompt.
    #[tool(
        name = "generate_image",
        input_schema = input_schema::<GenerateParams>(),
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
        Args(params): Args<GenerateParams>,
        state: RequestState,
        responses: InputResponses,
        context: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let params = match params {
            Ok(params) => params,
            Err(e) => return error_result(e).into(),
        };
        // The snapshot taken here serves the whole call, whatever reloads meanwhile.
        let engine = self.live.engine();
        let cost = CostCheck::new(
            &engine,
            || engine.estimate_usd(&params, false),
            params.confirm_cost,
            images_of(params.options.n, "generate"),
            (state, responses),
        );
        self.image_call(
            "generate_image",
            cost,
            context,
            error_result,
            |call| async move {
                let outcome = engine.generate(&params, &call).await;
                single_result(engine, outcome, params.delivery, "generate_image").await
            },
        )
        .await
    }

    /// Generates many images in one call.
    #[tool(
        name = "generate_images",
        input_schema = input_schema::<BatchParams>(),
        description = "Generate several images in one call: `prompts` (a list), `items` (a list of objects, each a prompt with its own parameters), or `prompt` with `count` (variations of one idea). Shared parameters (size, quality, model, ...) apply to every item. Items run concurrently; results come back in input order, each with its images or its own error, plus a summary. Inline previews of the whole batch share one size budget; every image has a resource link.",
        output_schema = schema_for_output::<BatchOutput>(),
        annotations(
            title = "Generate images (batch)",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn generate_images(
        &self,
        Args(params): Args<BatchParams>,
        state: RequestState,
        responses: InputResponses,
        context: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let params = match params {
            Ok(params) => params,
            Err(e) => return failure_result(&e, &BatchOutput::failure(e.clone(), 0)).into(),
        };
        let engine = self.live.engine();
        let cost = CostCheck::new(
            &engine,
            || batch::estimate_usd(&params, &engine),
            params.confirm_cost,
            "generate a batch of images".into(),
            (state, responses),
        );
        self.image_call(
            "generate_images",
            cost,
            context,
            batch_refused,
            |call| async move {
                let (output, generations) = batch::run(engine.clone(), &params, &call).await;
                let mode = params.delivery.unwrap_or(engine.output().delivery);
                with_previews(mode, move || {
                    batch_result(&engine, &output, &generations, mode)
                })
                .await
            },
        )
        .await
    }

    /// Edits images with a prompt and an optional mask.
    #[tool(
        name = "edit_image",
        input_schema = input_schema::<EditParams>(),
        description = "Edit images: give a prompt and input `images` (how many each model takes is in list_providers) (the imagegen://images/... URI of an image this server made, a file path inside the allowed directories, or base64: about 12 MB in all per call, so pass large images by path or URI), and optionally a `mask` (PNG with alpha, same size as the first image; transparent pixels mark what to change). Results are saved and returned like generate_image's. Use it to refine an image you just made (\"same scene at night\").",
        output_schema = schema_for_output::<GenerateOutput>(),
        annotations(
            title = "Edit image",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn edit_image(
        &self,
        Args(params): Args<EditParams>,
        state: RequestState,
        responses: InputResponses,
        context: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let params = match params {
            Ok(params) => params,
            Err(e) => return error_result(e).into(),
        };
        let engine = self.live.engine();
        let cost = CostCheck::new(
            &engine,
            || engine.estimate_usd(&params.as_generate(), true),
            params.confirm_cost,
            images_of(params.options.n, "edit into"),
            (state, responses),
        );
        let viewer = viewer(&self.live, caller(&context));
        self.image_call(
            "edit_image",
            cost,
            context,
            error_result,
            |call| async move {
                call.progress.phase("reading inputs");
                let (images, mask, markup) = (
                    params.images.clone(),
                    params.mask.clone(),
                    params.markup.clone(),
                );
                let outcome = match read_inputs(&engine, &viewer, images, mask, markup).await {
                    Ok(inputs) => engine.edit(&params, inputs, &call).await,
                    Err(e) => Err(e),
                };
                single_result(engine, outcome, params.delivery, "edit_image").await
            },
        )
        .await
    }

    /// Makes variations of one image, where the model supports it.
    #[tool(
        name = "create_variation",
        input_schema = input_schema::<VariationParams>(),
        description = "Make variations of one image (no prompt). Only models whose list_providers entry says variations: true (dall-e-2 on compatible servers, the mock); others give an `unsupported` error naming models that can. For most changes, use edit_image.",
        output_schema = schema_for_output::<GenerateOutput>(),
        annotations(
            title = "Create variation",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn create_variation(
        &self,
        Args(params): Args<VariationParams>,
        state: RequestState,
        responses: InputResponses,
        context: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let params = match params {
            Ok(params) => params,
            Err(e) => return error_result(e).into(),
        };
        let engine = self.live.engine();
        let cost = CostCheck::new(
            &engine,
            || engine.variation_estimate_usd(&params),
            params.confirm_cost,
            images_of(params.n, "make variations as"),
            (state, responses),
        );
        let viewer = viewer(&self.live, caller(&context));
        self.image_call(
            "create_variation",
            cost,
            context,
            error_result,
            |call| async move {
                let image = vec![params.image.clone()];
                let outcome = match read_inputs(&engine, &viewer, image, None, None).await {
                    Ok(mut inputs) => {
                        engine
                            .variation(&params, inputs.images.remove(0), &call)
                            .await
                    }
                    Err(e) => Err(e),
                };
                single_result(engine, outcome, params.delivery, "create_variation").await
            },
        )
        .await
    }

    /// Searches the images made before.
    #[tool(
        name = "find_images",
        input_schema = input_schema::<FindParams>(),
        description = "Search the images made before, newest first: `query` (words that must all be in the prompt), `provider`, `model`, and a date range `since`/`until` (YYYY-MM-DD or RFC 3339). Each result is a resource link (imagegen://images/..., readable with resources/read, usable as an edit_image input) with the image's prompt, model, provider, created time, size and sha256. `limit` is 20 by default (at most 100); pass `next_cursor` as `cursor` for the next page. Over HTTP each caller sees only their own images unless the server shares them.",
        output_schema = schema_for_output::<FindImagesOutput>(),
        annotations(
            title = "Find images",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn find_images(
        &self,
        Args(params): Args<FindParams>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        self.search("find_images", params, context, false).await
    }

    /// One page of the caller's stored images with thumbnails, for the gallery app only.
    #[tool(
        name = "gallery_page",
        input_schema = input_schema::<FindParams>(),
        description = "For the gallery app (hidden from the model): one page of the stored images, newest first, as find_images gives them (at most 24), each followed by a 256 px thumbnail. Models should call find_images instead.",
        output_schema = schema_for_output::<FindImagesOutput>(),
        annotations(
            title = "Gallery page",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn gallery_page(
        &self,
        Args(params): Args<FindParams>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let params = params.map(|mut p| {
            p.limit = Some(p.limit.unwrap_or(12).min(crate::gallery::app::PAGE));
            p
        });
        self.search("gallery_page", params, context, true).await
    }

    /// A search of the stored images the caller may see, for `tool`; with `thumbnails`, each
    /// image found is followed by its thumbnail, naming it in `_meta.uri` (one that cannot be
    /// made is left out).
    async fn search(
        &self,
        tool: &'static str,
        params: Result<FindParams, ToolError>,
        context: RequestContext<RoleServer>,
        thumbnails: bool,
    ) -> CallToolResult {
        let snapshot = self.live.snapshot();
        let storage = &snapshot.loaded.config.storage;
        let owner = owner_filter(&context, storage.shared);
        let index_path = storage.index_path.clone();
        let store = snapshot.engine.store().clone();
        let engine = snapshot.engine.clone();
        let sees = viewer(&self.live, caller(&context));
        with_progress(&self.calls, &engine, tool, context, |_| async move {
            let outcome = match params.and_then(|p| p.to_query(owner)) {
                Ok(query) => index::search_store(index_path, store.clone(), query).await,
                Err(e) => Err(e),
            };
            let found: Vec<(String, String)> = match &outcome {
                Ok(page) if thumbnails => page
                    .images
                    .iter()
                    .map(|i| (i.name.clone(), i.uri.clone()))
                    .collect(),
                _ => Vec::new(),
            };
            let mut result = find_result(outcome);
            for (name, uri) in found {
                if let Ok(thumb) = crate::gallery::thumbs::thumbnail(&store, &name, &sees).await {
                    let data = base64::engine::general_purpose::STANDARD.encode(&thumb.bytes);
                    let mut image = rmcp::model::ImageContent::new(data, thumb.mime);
                    let mut meta = rmcp::model::MetaObject::default();
                    meta.insert("uri".into(), uri.into());
                    image.meta = Some(meta);
                    result.content.push(ContentBlock::Image(image));
                }
            }
            result
        })
        .await
    }

    /// Deletes one stored image and its metadata.
    #[tool(
        name = "delete_image",
        input_schema = input_schema::<DeleteParams>(),
        description = "Delete a stored image (its imagegen://images/... URI or name) and its metadata, for good. Over HTTP a caller deletes only their own images.",
        output_schema = schema_for_output::<DeleteOutput>(),
        annotations(
            title = "Delete image",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn delete_image(
        &self,
        Args(params): Args<DeleteParams>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let failed = |error: ToolError| {
            let output = DeleteOutput {
                deleted: None,
                error: Some(error.clone()),
            };
            failure_result(&error, &output)
        };
        let params = match params {
            Ok(params) => params,
            Err(e) => return failed(e),
        };
        let spec = params.image.trim();
        let name = ImageStore::name_from_uri(spec).unwrap_or(spec);
        let viewer = viewer(&self.live, caller(&context));
        let store = self.live.engine().store().clone();
        match store.delete(name, &viewer).await {
            Ok(()) => {
                tracing::info!(image = %name, "image deleted");
                let output = DeleteOutput {
                    deleted: Some(name.to_string()),
                    error: None,
                };
                let structured = serde_json::to_value(&output).unwrap_or_default();
                let mut result = CallToolResult::success(vec![ContentBlock::text(format!(
                    "Deleted {name} and its metadata."
                ))]);
                result.structured_content = Some(structured);
                result
            }
            Err(e) => failed(match e.kind {
                StoreErrorKind::NotFound => ToolError::new(
                    imagegen_providers::ErrorKind::NotFound,
                    format!("no stored image `{name}` (of yours)"),
                ),
                StoreErrorKind::Refused => ToolError::invalid_param("image", e.message),
                StoreErrorKind::Failed => ToolError::storage(e.message),
            }),
        }
    }

    /// Lists providers, models and what each model accepts.
    #[tool(
        name = "list_providers",
        description = "List the configured image providers, which one is the default, their models and aliases (`fast`, `best`), each model's lifecycle (state active/deprecated/shut_down, shutdown_date, replacement) and what it accepts (sizes, qualities, formats including gif/svg, complexities, GIF rules, n, prompt length, parameters), each provider's API keys as fingerprints with their state, the prompt presets usable as `preset` (template, description, provider, model, options), and the configuration's reload status.",
        annotations(
            title = "List providers",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_providers(&self) -> Json<ProvidersOutput> {
        Json(providers_output(&self.live))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ImagegenServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            {
                let capabilities = ServerCapabilities::builder()
                    .enable_tools()
                    .enable_resources()
                    .enable_resources_list_changed();
                if self.live.snapshot().loaded.config.tasks.enabled {
                    capabilities.enable_tasks().build()
                } else {
                    capabilities.build()
                }
            },
        )
        .with_server_info(Implementation::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Image generation. Call generate_image with a prompt; results link to the saved full image (imagegen://images/...) and include a small preview. `model` takes a name or an alias (`fast`, `best`); results name the model that served and carry `notes` (a replacement for a shut-down model, a deprecation). Use list_providers to see models, their lifecycle and what they accept.",
        )
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A 2025-11-25 session hears of stored and deleted images for as long as it lasts.
        let peer = context.peer;
        let mut changes = storage::subscribe_changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = storage::next_change(&mut changes) => {
                        if !changed {
                            break;
                        }
                        if peer.notify_resource_list_changed().await.is_err() {
                            break;
                        }
                    }
                    // A session that ended while nothing changed is noticed here.
                    () = tokio::time::sleep(SESSION_CHECK) => {
                        if peer.is_transport_closed() {
                            break;
                        }
                    }
                }
            }
        });
    }

    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(
            SubscriptionFilter::builder()
                .resources_list_changed()
                .build(),
        )
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        // A 2026-07-28 client's `subscriptions/listen`: the listing's changes until it ends.
        let mut changes = storage::subscribe_changes();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = storage::next_change(&mut changes) => {
                    if !changed {
                        return Ok(());
                    }
                    if let Err(e) = context.sink().notify_resource_list_changed().await {
                        tracing::debug!("list-changed notification not sent: {e}");
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let store = self.live.engine().store().clone();
        let stale = crate::tasks::stale_after(heartbeat());
        self.tasks
            .get(&request.task_id, &caller_name(&context), &store, stale)
            .await
            .map(GetTaskResult::new)
            .map_err(task_error)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let store = self.live.engine().store().clone();
        tracing::info!(task = %request.task_id, "task cancel asked");
        self.tasks
            .cancel(&request.task_id, &caller_name(&context), &store)
            .await
            .map_err(task_error)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let cursor = request.and_then(|r| r.cursor);
        let store = self.live.engine().store().clone();
        let viewer = viewer(&self.live, caller(&context));
        let page = store
            .list(&viewer, cursor.as_deref(), storage::MAX_PAGE)
            .await
            .map_err(|e| store_error(e, "the image listing"))?;
        let mut resources = Vec::with_capacity(page.images.len() + 1);
        if cursor.is_none() {
            resources.push(
                Resource::new(STATUS_URI, "status")
                    .with_mime_type("application/json")
                    .with_description(
                        "Live server status: configuration generation, load time, reload errors, and each provider's API keys (fingerprints only) with their state",
                    ),
            );
            resources.push(
                Resource::new(USAGE_URI, "usage")
                    .with_mime_type("application/json")
                    .with_description(
                        "What image calls cost today and this month (UTC), by provider and by caller, from the usage ledger; over HTTP a caller sees only their own calls unless the store is shared",
                    ),
            );
        }
        if cursor.is_none() {
            resources.push(crate::gallery::app::resource());
        }
        resources.extend(page.images.into_iter().map(|e| {
            Resource::new(format!("{}{}", storage::IMAGE_URI_PREFIX, e.name), e.name)
                .with_mime_type(e.mime)
                .with_size(e.bytes)
        }));
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = page.next_cursor;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{}{{name}}", storage::IMAGE_URI_PREFIX), "image")
                .with_description("A stored image, exactly as the provider made it"),
            ResourceTemplate::new(
                format!("{}{{name}}{}", storage::IMAGE_URI_PREFIX, storage::META_URI_SUFFIX),
                "image-metadata",
            )
            .with_description(
                "How a stored image was made: prompt as given and as sent, revised prompt, provider, model, parameters, usage, request id, sha256, size",
            )
            .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        if uri == crate::gallery::app::URI {
            return Ok(crate::gallery::app::read().into());
        }
        if uri == STATUS_URI {
            let json = serde_json::to_string_pretty(&status_output(&self.live))
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(json, uri).with_mime_type("application/json")
            ])
            .into());
        }
        let engine = self.live.engine();
        let store = engine.store();
        let viewer = viewer(&self.live, caller(&context));
        if uri == USAGE_URI {
            let only = match &viewer {
                Viewer::Caller(me) => Some(me.as_str()),
                Viewer::Everyone => None,
            };
            let overview = crate::ledger::Overview::now(engine.ledger(), only)
                .await
                .map_err(|e| {
                    McpError::internal_error(format!("cannot read the usage ledger: {e}"), None)
                })?;
            let json = serde_json::to_string_pretty(&overview)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(json, uri).with_mime_type("application/json")
            ])
            .into());
        }
        if let Some(name) = ImageStore::name_from_meta_uri(&uri) {
            let sidecar = store
                .sidecar(name, &viewer)
                .await
                .map_err(|e| store_error(e, &uri))?;
            let json = serde_json::to_string_pretty(&sidecar)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(json, uri).with_mime_type("application/json")
            ])
            .into());
        }
        let name = ImageStore::name_from_uri(&uri).ok_or_else(|| {
            McpError::resource_not_found(format!("no such resource: {uri}"), None)
        })?;
        let cap = engine.output().max_read_mb.saturating_mul(1_000_000);
        let (bytes, mime) = store
            .read(name, cap, &viewer)
            .await
            .map_err(|e| store_error(e, &uri))?;
        let blob = base64::engine::general_purpose::STANDARD.encode(bytes);
        Ok(
            ReadResourceResult::new(vec![ResourceContents::blob(blob, uri).with_mime_type(mime)])
                .into(),
        )
    }
}
