//! MCP tasks through the real binary and rmcp's client: a client that declares the tasks
//! extension gets a task, polls it to the same result a synchronous call gives, reads it again
//! after a restart or from another connection, and can cancel it (the upstream request ends,
//! nothing is saved); a client without tasks is served synchronously.

use std::time::{Duration, Instant};

use crate::common::{http_server::HttpServer, *};
use base64::Engine as _;
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
        ClientCapabilities, ClientConfig, DetailedTask, GetTaskParams, ProtocolVersion,
        TaskPayload, TaskStatus,
    },
    service::{ClientLifecycleMode, ClientServiceExt as _, RunningService},
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ClientHandler, RoleClient,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

/// A client that declares the tasks extension.
#[derive(Debug, Clone)]
struct TaskClient(ProtocolVersion);

impl ClientHandler for TaskClient {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = self.0.clone();
        info.capabilities = ClientCapabilities::builder().enable_tasks().build();
        info
    }
}

async fn http(url: &str, token: &str) -> RunningService<RoleClient, TaskClient> {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    TaskClient(ProtocolVersion::V_2026_07_28)
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("MCP over HTTP connects")
}

fn request(tool: &'static str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool).with_arguments(args(arguments))
}

/// Starts `tool` and returns its task id; panics if the server answered without a task.
async fn start_task(
    client: &RunningService<RoleClient, TaskClient>,
    tool: &'static str,
    arguments: Value,
) -> String {
    match client
        .call_tool_once(request(tool, arguments))
        .await
        .unwrap()
    {
        CallToolResponse::Task(created) => {
            assert_eq!(created.task.status, TaskStatus::Working);
            assert!(created.task.poll_interval_ms.is_some());
            created.task.task_id
        }
        other => panic!("expected a task, got {other:?}"),
    }
}

/// Polls task `id` until it ends, returning it and every status message seen on the way.
async fn poll<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
    id: &str,
) -> (DetailedTask, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = Vec::new();
    loop {
        let task = client
            .get_task(GetTaskParams::new(id))
            .await
            .expect("tasks/get")
            .task;
        messages.extend(task.task.status_message.clone());
        if task.status().is_terminal() {
            return (task, messages);
        }
        assert!(Instant::now() < deadline, "task {id} never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed(task: &DetailedTask) -> CallToolResult {
    let TaskPayload::Completed { result } = &task.payload else {
        panic!("expected a completed task, got {task:?}");
    };
    serde_json::from_value(Value::Object(result.clone())).expect("a CallToolResult")
}

fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

fn images_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
            })
            .count()
    })
}

#[tokio::test]
async fn a_task_polls_to_the_synchronous_result_and_survives_a_restart() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("imagegen.toml"),
        "[providers.mock]\nlatency_ms = 400\n",
    )
    .unwrap();
    let envs = [("IMAGEGEN_HEARTBEAT_MS", "50")];
    let arguments = json!({"prompt": "a lighthouse", "size": "256x256", "seed": 7});

    // A client without tasks is served as before: the result comes in the call.
    let plain = serve_to(
        home.path(),
        &envs,
        VersionedClient(ProtocolVersion::V_2026_07_28),
    )
    .await;
    let tools = plain.list_all_tools().await.unwrap();
    let generate = tools.iter().find(|t| t.name == "generate_image").unwrap();
    assert_eq!(
        generate.meta.as_ref().unwrap()["io.modelcontextprotocol/tasks"]["taskSupport"],
        "optional",
        "the listing declares task support"
    );
    let sync = match plain
        .call_tool_once(request("generate_image", arguments.clone()))
        .await
        .unwrap()
    {
        CallToolResponse::Complete(result) => result,
        other => panic!("a client without tasks is answered in the call: {other:?}"),
    };
    plain.cancel().await.unwrap();

    for version in [ProtocolVersion::V_2026_07_28, ProtocolVersion::V_2025_11_25] {
        let client = serve_to(home.path(), &envs, TaskClient(version.clone())).await;
        let id = start_task(&client, "generate_image", arguments.clone()).await;
        let (task, messages) = poll(&client, &id).await;
        assert_eq!(task.status(), TaskStatus::Completed, "{version:?}");
        assert!(
            messages.iter().any(|m| m.contains("requesting")),
            "progress shows as the status message: {messages:?}"
        );
        let result = completed(&task);
        let (a, b) = (structured(&result), structured(&sync));
        assert_eq!(result.is_error, sync.is_error);
        for field in ["provider", "model", "prompt"] {
            assert_eq!(a[field], b[field], "{field}");
        }
        assert_eq!(a["images"][0]["sha256"], b["images"][0]["sha256"]);
        assert_eq!(result.content.len(), sync.content.len());
        client.cancel().await.unwrap();

        // A new server process reads the finished task from the store.
        let again = serve_to(home.path(), &envs, TaskClient(version.clone())).await;
        let (reread, _) = poll(&again, &id).await;
        assert_eq!(structured(&completed(&reread)), a);
        // An id that is not one of ours is an invalid-params error, not a crash.
        let unknown = again
            .get_task(GetTaskParams::new("../../etc/passwd"))
            .await
            .unwrap_err();
        assert!(format!("{unknown:?}").contains("no task"), "{unknown:?}");
        again.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn a_cancelled_task_drops_the_upstream_call_and_saves_nothing() {
    let upstream = MockServer::start().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(256, 256).await);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"created": 1, "data": [{"b64_json": b64}]}))
                .set_delay(Duration::from_secs(20)),
        )
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("imagegen.toml"), "# the defaults\n").unwrap();
    let base = format!("{}/v1", upstream.uri());
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
        ("IMAGEGEN_HEARTBEAT_MS", "50"),
    ];
    let client = serve_to(
        home.path(),
        &envs,
        TaskClient(ProtocolVersion::V_2026_07_28),
    )
    .await;
    let id = start_task(
        &client,
        "generate_image",
        json!({"prompt": "a lighthouse", "model": "gpt-image-2"}),
    )
    .await;
    let sent = Instant::now() + Duration::from_secs(10);
    while upstream.received_requests().await.unwrap().is_empty() {
        assert!(Instant::now() < sent, "the request never went upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    client
        .cancel_task(CancelTaskParams::new(&id))
        .await
        .unwrap();
    let (task, _) = poll(&client, &id).await;
    assert_eq!(task.status(), TaskStatus::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancelled at once, not after the upstream's 20 s: {:?}",
        asked.elapsed()
    );
    let images = home.path().join(".local/share/imagegen-mcp/images");
    assert_eq!(images_in(&images), 0, "a cancelled task saves nothing");
    assert_eq!(upstream.received_requests().await.unwrap().len(), 1);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_batch_outlives_the_client_that_gave_up_and_is_read_from_another_connection() {
    let tokens = "[[server.auth.tokens]]\nname = \"alice\"\ntoken = \"alice-token-0123456789\"\n\
                  [[server.auth.tokens]]\nname = \"bob\"\ntoken = \"bob-token-0123456789ab\"\n";
    let server = HttpServer::start_mock(
        &format!("[providers.mock]\nlatency_ms = 700\n[limits]\nmax_in_flight = 1\n{tokens}"),
        &[],
    )
    .await;
    let url = server.mcp();
    let client = http(&url, "alice-token-0123456789").await;
    let id = start_task(
        &client,
        "generate_images",
        json!({"prompts": ["a", "b", "c"], "size": "256x256"}),
    )
    .await;
    // The client gives up long before the ~2.1 s the three items take one after the other.
    let quick = tokio::time::timeout(Duration::from_millis(300), poll(&client, &id)).await;
    assert!(quick.is_err(), "the batch was not done yet");
    drop(client);

    let back = http(&url, "alice-token-0123456789").await;
    let (task, _) = poll(&back, &id).await;
    let result = completed(&task);
    let output = structured(&result);
    assert_eq!(output["summary"]["succeeded"], 3, "{output}");
    for item in output["results"].as_array().unwrap() {
        assert_eq!(item["images"].as_array().unwrap().len(), 1, "{item}");
    }

    // Another caller cannot see it.
    let bob = http(&url, "bob-token-0123456789ab").await;
    let refused = bob.get_task(GetTaskParams::new(&id)).await.unwrap_err();
    assert!(format!("{refused:?}").contains("no task"), "{refused:?}");
    let output = server.stop().await;
    assert!(!output.contains("alice-token-0123456789"));
}
