//! Model lifecycles through the real binary: today's default, shut-down models replaced,
//! refused or sent to compatible servers, retired models found upstream, and `models --check`.

use crate::common::*;
use rmcp::model::{CallToolRequestParams, ProtocolVersion, ReadResourceRequestParams};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, ResponseTemplate,
};

async fn run(home: &std::path::Path, envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    binary(home, envs)
        .args(args)
        .output()
        .await
        .expect("run imagegen-mcp")
}

/// An images answer holding one real PNG.
async fn image_answer() -> ResponseTemplate {
    let png = png(64, 64).await;
    ResponseTemplate::new(200).set_body_json(json!({
        "created": 1, "data": [{"b64_json": b64(&png)}],
        "usage": {"input_tokens": 5, "output_tokens": 100, "total_tokens": 105}
    }))
}

/// The `model` of every generation request the stub received, in order.
async fn models_sent(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/images/generations"))
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["model"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// Answers 404 `model_not_found` for `retired`, an image for any other model.
struct RetiredModel {
    retired: &'static str,
    image: ResponseTemplate,
}

impl wiremock::Respond for RetiredModel {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        if body["model"] == self.retired {
            return ResponseTemplate::new(404).set_body_json(json!({"error": {
                "message": format!("The model `{}` does not exist or you do not have access to it.", self.retired),
                "type": "invalid_request_error", "param": null, "code": "model_not_found"}}));
        }
        self.image.clone()
    }
}

/// A fake upstream answering every generation with `respond`.
async fn images_stub(respond: impl wiremock::Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(respond)
        .mount(&server)
        .await;
    server
}

/// Model `model` of provider `provider` as `list_providers` shows it.
async fn listed_model(server: &Server, provider: &str, model: &str) -> Value {
    let listed = server
        .client
        .call_tool(CallToolRequestParams::new("list_providers"))
        .await
        .unwrap();
    let providers = listed.structured_content.unwrap();
    let entry = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == provider)
        .cloned()
        .unwrap();
    entry["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model)
        .cloned()
        .unwrap()
}

/// The `imagegen://status` resource, parsed.
async fn status(server: &Server) -> Value {
    let status = server
        .client
        .read_resource(ReadResourceRequestParams::new("imagegen://status"))
        .await
        .unwrap();
    let text = serde_json::to_value(&status.contents[0]).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_str(&text).unwrap()
}

fn config(home: &std::path::Path, toml: &str) -> String {
    let file = home.join("imagegen.toml");
    std::fs::write(&file, toml).unwrap();
    file.to_str().unwrap().to_string()
}

#[tokio::test]
async fn the_readme_command_with_a_key_sends_todays_default_model() {
    let upstream = images_stub(image_answer().await).await;
    let home = tempfile::tempdir().unwrap();
    let base = format!("{}/v1", upstream.uri());
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    let out = run(home.path(), &envs, &["generate", "a lighthouse at dusk"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(models_sent(&upstream).await, vec!["gpt-image-2.6-flare"]);
    assert!(
        !stderr.contains("mock"),
        "a real provider served it: {stderr}"
    );
    assert!(!stderr.contains(SENTINEL_KEY));
}

#[tokio::test]
async fn with_no_key_the_cli_says_once_that_the_mock_made_the_image() {
    let home = tempfile::tempdir().unwrap();
    let out = run(home.path(), &[], &["generate", "a lighthouse at dusk"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let notice = "made offline by the mock provider; set OPENAI_API_KEY to use OpenAI";
    assert_eq!(stderr.matches(notice).count(), 1, "{stderr}");
    // Chosen on purpose, the mock needs no explanation.
    let out = run(home.path(), &[], &["generate", "x", "--provider", "mock"]).await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains(notice));
}

#[tokio::test]
async fn a_config_naming_a_shut_down_model_keeps_working_through_its_replacement() {
    let upstream = images_stub(image_answer().await).await;
    let home = tempfile::tempdir().unwrap();
    // A gateway that passes calls to OpenAI unchanged: OpenAI's dates hold for it.
    let file = config(
        home.path(),
        &format!(
            "default_provider = \"openai\"\n[providers.openai]\nbase_url = \"{}/v1\"\napi_key = \"{SENTINEL_KEY}\"\nmodel = \"gpt-image-1.5\"\ncatalog_dates_apply = true\n",
            upstream.uri()
        ),
    );
    let out = run(
        home.path(),
        &[],
        &["--config", &file, "generate", "x", "--json"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["model"], "gpt-image-2.6-flare");
    assert_eq!(result["requested_model"], "gpt-image-1.5");
    let notes = result["notes"].to_string();
    assert!(notes.contains("`gpt-image-1.5` was shut down on 2026-12-01; the call went to its replacement `gpt-image-2.6-flare`"), "{notes}");
    assert_eq!(models_sent(&upstream).await, vec!["gpt-image-2.6-flare"]);

    // `config check` warns about the default; in refuse mode it fails, and so does the call,
    // before anything is sent.
    let out = run(home.path(), &[], &["--config", &file, "config", "check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("warning: the default model of provider `openai` is `gpt-image-1.5`, which is shut down on 2026-12-01; use `gpt-image-2.6-flare` instead"), "{stdout}");
    let refuse = std::fs::read_to_string(&file).unwrap() + "[catalog]\non_shutdown = \"refuse\"\n";
    std::fs::write(&file, refuse).unwrap();
    let out = run(home.path(), &[], &["--config", &file, "config", "check"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(
        home.path(),
        &[],
        &["--config", &file, "generate", "x", "--json"],
    )
    .await;
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["error"]["kind"], "invalid_request");
    assert_eq!(result["error"]["param"], "model");
    assert!(result["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`gpt-image-2.6-flare`"));
    assert_eq!(
        models_sent(&upstream).await.len(),
        1,
        "nothing more was sent"
    );
}

#[tokio::test]
async fn a_compatible_server_gets_the_old_model_and_the_replacement_only_when_it_lacks_it() {
    // One server still serves gpt-image-1.5; another has dropped it.
    let serving = images_stub(image_answer().await).await;
    let dropped = images_stub(RetiredModel {
        retired: "gpt-image-1.5",
        image: image_answer().await,
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let file = config(
        home.path(),
        &format!(
            "default_provider = \"serving\"\n[providers.serving]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"gpt-image-1.5\"\n[providers.dropped]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"gpt-image-1.5\"\n",
            serving.uri(),
            dropped.uri()
        ),
    );
    let out = run(
        home.path(),
        &[],
        &["--config", &file, "generate", "x", "--json"],
    )
    .await;
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["model"], "gpt-image-1.5", "{result}");
    assert!(
        result["notes"][0]
            .as_str()
            .unwrap()
            .contains("sent as asked"),
        "{result}"
    );
    assert_eq!(models_sent(&serving).await, vec!["gpt-image-1.5"]);

    let out = run(
        home.path(),
        &[],
        &[
            "--config",
            &file,
            "generate",
            "x",
            "--json",
            "--provider",
            "dropped",
        ],
    )
    .await;
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["model"], "gpt-image-2.6-flare", "{result}");
    let notes = result["notes"].to_string();
    assert!(
        notes.contains("the provider no longer serves `gpt-image-1.5`")
            && notes.contains("replacement `gpt-image-2.6-flare`"),
        "{notes}"
    );
    assert_eq!(
        models_sent(&dropped).await,
        vec!["gpt-image-1.5", "gpt-image-2.6-flare"]
    );
}

#[tokio::test]
async fn an_active_model_the_upstream_lacks_looks_retired_and_the_status_says_so() {
    let upstream = images_stub(RetiredModel {
        retired: "gpt-image-2",
        image: image_answer().await,
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let file = config(
        home.path(),
        &format!(
            "default_provider = \"openai\"\n[catalog]\ncheck_upstream = false\n[providers.openai]\nbase_url = \"{}/v1\"\napi_key = \"{SENTINEL_KEY}\"\n",
            upstream.uri()
        ),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", &file],
        &[],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let result = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image")
                .with_arguments(args(json!({"prompt": "x", "model": "gpt-image-2"}))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let error = &result.structured_content.clone().unwrap()["error"];
    assert_eq!(error["kind"], "not_found");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("`gpt-image-2` does not exist") && message.contains("looks retired"),
        "{message}"
    );
    assert!(
        message.contains("the likely replacement is `gpt-image-2.6-flare`"),
        "{message}"
    );
    let status = status(&server).await;
    let row = status["model_lifecycle"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "gpt-image-2")
        .cloned();
    assert!(
        row.as_ref()
            .is_some_and(|r| r["upstream_missing"].is_string()),
        "{status}"
    );
    let gpt2 = listed_model(&server, "openai", "gpt-image-2").await;
    assert!(gpt2["upstream_missing"].is_string(), "{gpt2}");
    assert!(!server.stop().await.contains(SENTINEL_KEY));
}

#[tokio::test]
async fn models_check_reports_announced_shutdowns_missing_and_unknown_models() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [
            {"id": "gpt-image-2.6-flare", "object": "model", "created": 1, "owned_by": "system", "shutdown_date": null},
            {"id": "gpt-image-2.6-sunburst", "object": "model", "created": 1, "owned_by": "system"},
            {"id": "gpt-image-2", "object": "model", "created": 1, "owned_by": "system", "shutdown_date": "2027-04-21"},
            {"id": "gpt-image-2.5-flare", "object": "model", "created": 1, "owned_by": "system"},
            {"id": "gpt-image-3-preview", "object": "model", "created": 1, "owned_by": "system"},
            {"id": "gpt-5.2", "object": "model", "created": 1, "owned_by": "system"}
        ]})))
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    let base = format!("{}/v1", upstream.uri());
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    let out = run(
        home.path(),
        &envs,
        &["models", "--check", "--provider", "openai"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("announces that `gpt-image-2` shuts down on 2027-04-21"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no longer lists `gpt-image-2.5-sunburst`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("serves `gpt-image-3-preview`, which the catalog does not know"),
        "{stdout}"
    );
    assert!(!stdout.contains("gpt-5.2"), "not an image model: {stdout}");
    // The table shows the announced date as the model's lifecycle.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("gpt-image-2 "))
        .unwrap();
    assert!(
        row.contains("deprecated") && row.contains("2027-04-21"),
        "{row}"
    );

    let out = run(home.path(), &envs, &["models", "--json"]).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["models"].as_array().unwrap();
    let old = rows.iter().find(|r| r["model"] == "gpt-image-1.5").unwrap();
    assert_eq!(
        (
            old["state"].as_str(),
            old["shutdown_date"].as_str(),
            old["replacement"].as_str()
        ),
        (
            Some("shut_down"),
            Some("2026-12-01"),
            Some("gpt-image-2.6-flare")
        )
    );
    let flare = rows
        .iter()
        .find(|r| r["model"] == "gpt-image-2.6-flare")
        .unwrap();
    assert!(
        flare["aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("openai:fast")),
        "{flare}"
    );
}

#[tokio::test]
async fn serve_checks_the_upstream_in_the_background_and_merges_announced_dates() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [
                {"id": "gpt-image-2.6-flare", "object": "model"},
                {"id": "gpt-image-2", "object": "model", "shutdown_date": "2027-04-21"}
            ]})),
        )
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    let base = format!("{}/v1", upstream.uri());
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
        ("IMAGEGEN_CATALOG__CHECK_UPSTREAM", "true"),
    ];
    let server = Server::start(home.path(), &envs, ProtocolVersion::V_2025_11_25).await;
    // The check runs beside start-up: the server answered the handshake without waiting for it.
    let mut gpt2 = Value::Null;
    for _ in 0..100 {
        gpt2 = listed_model(&server, "openai", "gpt-image-2").await;
        if gpt2["shutdown_date"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (gpt2["state"].as_str(), gpt2["shutdown_date"].as_str()),
        (Some("deprecated"), Some("2027-04-21")),
        "{gpt2}"
    );
    let status = status(&server).await;
    assert_eq!(
        status["upstream_checks"][0]["announced"]["gpt-image-2"], "2027-04-21",
        "{status}"
    );
    let stderr = server.stop().await;
    assert!(
        stderr.contains("announces that `gpt-image-2` shuts down on 2027-04-21"),
        "{stderr}"
    );
    assert!(!stderr.contains(SENTINEL_KEY));
    let listed = upstream.received_requests().await.unwrap();
    let auth = listed[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(auth, format!("Bearer {SENTINEL_KEY}"));
}
