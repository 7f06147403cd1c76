//! `[moderation_check]` through the real binary: the prompt (and an edit's images) goes to a
//! fake OpenAI `POST /v1/moderations` before anything is generated. Flagged prompts are
//! refused as `content_policy` with their categories and no image request (wiremock's
//! `.expect(0)`), even when the cache holds an answer; clean ones generate; a failing check
//! refuses or lets the call through with a note, as `on_error` says; a batch refuses only its
//! flagged items; and the key never shows.

use std::path::Path;

use crate::common::*;
use imagegen_testkit::openai as testkit_openai;
use rmcp::model::{CallToolRequestParams, CallToolResult, ProtocolVersion};
use serde_json::{json, Value};
use wiremock::{
    matchers::{body_string_contains, method, path},
    Mock, MockServer, ResponseTemplate,
};

const MODERATIONS: &str = "/v1/moderations";
const GENERATIONS: &str = "/v1/images/generations";
const EDITS: &str = "/v1/images/edits";

/// A moderation answer flagging `categories` (none: clean).
fn verdict(categories: &[&str]) -> ResponseTemplate {
    let names = [
        "harassment",
        "harassment/threatening",
        "hate",
        "sexual",
        "violence",
    ];
    let map: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), Value::Bool(categories.contains(n))))
        .collect();
    ResponseTemplate::new(200)
        .insert_header("x-request-id", "req_moderation_7")
        .set_body_json(json!({
            "id": "modr-7",
            "model": "omni-moderation-2024-09-26",
            "results": [{"flagged": !categories.is_empty(), "categories": map,
                         "category_scores": {"violence": 0.97}}],
        }))
}

/// Image answers for `route`, expected exactly `times` times (checked when the server drops).
async fn images(server: &MockServer, route: &str, times: u64) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(ResponseTemplate::new(200).set_body_json(testkit_openai::ok_body(1, 32)))
        .expect(times)
        .mount(server)
        .await;
}

/// Starts the server on an `openai` provider at `upstream`, with `[moderation_check]`
/// enabled and `extra` added to it.
async fn start(home: &Path, upstream: &MockServer, extra: &str) -> Server {
    start_full(home, upstream, "", extra).await
}

/// [`start`] with `provider` added to the `openai` provider's table.
async fn start_full(home: &Path, upstream: &MockServer, provider: &str, extra: &str) -> Server {
    let file = home.join("imagegen.toml");
    std::fs::write(
        &file,
        format!(
            "default_provider = \"openai\"\n\
             [output]\ndir = \"out\"\ndelivery = \"link\"\n\
             [providers.openai]\nkind = \"openai\"\napi_key = \"{SENTINEL_KEY}\"\n\
             base_url = \"{}/v1\"\nmax_retries = 0\n{provider}\n\
             [moderation_check]\nenabled = true\n{extra}\n",
            upstream.uri()
        ),
    )
    .unwrap();
    let config = file.display().to_string();
    Server::start(
        home,
        &[("IMAGEGEN_CONFIG", config.as_str())],
        ProtocolVersion::V_2025_11_25,
    )
    .await
}

async fn call(server: &Server, tool: &'static str, arguments: Value) -> CallToolResult {
    server
        .client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args(arguments)))
        .await
        .expect("tool call")
}

fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

/// Everything a client sees of `result`, for leak checks.
fn shown(result: &CallToolResult) -> String {
    serde_json::to_string(result).unwrap()
}

/// How many requests `upstream` received on `route`.
async fn count(upstream: &MockServer, route: &str) -> usize {
    upstream
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == route)
        .count()
}

/// The JSON bodies of the moderation requests `upstream` received.
async fn moderation_bodies(upstream: &MockServer) -> Vec<Value> {
    upstream
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == MODERATIONS)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_flagged_prompt_is_refused_with_its_categories_even_when_the_cache_has_it() {
    let upstream = MockServer::start().await;
    // The first check is clean and its image is cached; the same prompt is then flagged.
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(verdict(&[]))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(verdict(&["violence", "harassment/threatening"]))
        .mount(&upstream)
        .await;
    images(&upstream, GENERATIONS, 1).await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "").await;
    let args = json!({"prompt": "a duel at dawn", "cache": true});

    let first = call(&server, "generate_image", args.clone()).await;
    assert_eq!(first.is_error, Some(false), "{first:?}");
    let out = structured(&first);
    assert_eq!(out["images"].as_array().unwrap().len(), 1);
    assert!(
        !out["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n.as_str().unwrap().contains("moderation")),
        "a clean check adds no note: {out}"
    );

    let refused = call(&server, "generate_image", args).await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let error = &structured(&refused)["error"];
    assert_eq!(error["kind"], "content_policy", "{error}");
    assert_eq!(error["retryable"], false);
    let mut categories: Vec<&str> = error["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    categories.sort();
    assert_eq!(categories, ["harassment/threatening", "violence"]);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("the moderation pre-check flagged the prompt: ")
            && message.contains("violence")
            && message.ends_with("nothing was generated"),
        "{message}"
    );
    assert_eq!(error["request_id"], "req_moderation_7");
    assert!(structured(&refused)["images"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!shown(&refused).contains("SENTINEL"));

    // Not a cache hit, not a second generation: the check came first.
    assert_eq!(count(&upstream, GENERATIONS).await, 1);
    let bodies = moderation_bodies(&upstream).await;
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[1],
        json!({"model": "omni-moderation-latest", "input": "a duel at dawn"})
    );
    let log = server.stop().await;
    assert!(!log.contains("SENTINEL"), "the key reached the log");
}

#[tokio::test]
async fn a_failing_check_refuses_by_default_and_never_shows_the_key() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"error": {
            "message": format!("internal error for key {SENTINEL_KEY}"),
            "type": "server_error"}})))
        .mount(&upstream)
        .await;
    images(&upstream, GENERATIONS, 0).await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "").await;

    let result = call(&server, "generate_image", json!({"prompt": "a lighthouse"})).await;
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let error = &structured(&result)["error"];
    assert_eq!(error["kind"], "upstream_unavailable", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("the moderation pre-check failed: ")
            && message.contains("HTTP 500")
            && message.contains("nothing was generated"),
        "{message}"
    );
    assert!(error.get("categories").is_none(), "{error}");
    assert!(!shown(&result).contains("SENTINEL"), "{}", shown(&result));
    assert_eq!(count(&upstream, GENERATIONS).await, 0);
    let log = server.stop().await;
    assert!(!log.contains("SENTINEL"), "the key reached the log");
}

#[tokio::test]
async fn with_on_error_allow_a_failing_check_generates_and_says_so() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(ResponseTemplate::new(503))
        .mount(&upstream)
        .await;
    images(&upstream, GENERATIONS, 1).await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "on_error = \"allow\"").await;

    let result = call(&server, "generate_image", json!({"prompt": "a lighthouse"})).await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let out = structured(&result);
    assert_eq!(out["images"].as_array().unwrap().len(), 1);
    let note = out["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|n| n.starts_with("moderation pre-check failed ("))
        .unwrap_or_else(|| panic!("no note: {out}"));
    assert!(
        note.contains("upstream_unavailable") && note.ends_with("; generated without it"),
        "{note}"
    );
    // The note reaches people too, in the text block.
    assert!(shown(&result).contains("generated without it"));
    assert_eq!(count(&upstream, MODERATIONS).await, 1, "max_retries = 0");
    server.stop().await;
}

#[tokio::test]
async fn a_batch_refuses_only_its_flagged_item() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .and(body_string_contains("forbidden"))
        .respond_with(verdict(&["hate"]))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(verdict(&[]))
        .mount(&upstream)
        .await;
    images(&upstream, GENERATIONS, 2).await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "").await;

    let result = call(
        &server,
        "generate_images",
        json!({"items": [
            {"prompt": "a red kite"},
            {"prompt": "something forbidden"},
            {"prompt": "a blue kite"},
        ]}),
    )
    .await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let out = structured(&result);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for i in [0, 2] {
        assert_eq!(results[i]["images"].as_array().unwrap().len(), 1, "{out}");
        assert!(results[i]["error"].is_null(), "{out}");
    }
    let error = &results[1]["error"];
    assert_eq!(error["kind"], "content_policy", "{out}");
    assert_eq!(error["categories"], json!(["hate"]));
    assert!(results[1]["images"].as_array().unwrap().is_empty());
    assert_eq!(count(&upstream, MODERATIONS).await, 3, "one check per item");
    assert_eq!(count(&upstream, GENERATIONS).await, 2);
    server.stop().await;
}

#[tokio::test]
async fn an_edit_sends_its_image_to_the_check_and_a_flagged_image_stops_the_edit() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .and(body_string_contains("image_url"))
        .respond_with(verdict(&["sexual"]))
        .mount(&upstream)
        .await;
    images(&upstream, EDITS, 0).await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "").await;
    let png = png(16, 16).await;

    let result = call(
        &server,
        "edit_image",
        json!({"prompt": "make it night", "images": [format!("data:image/png;base64,{}", b64(&png))]}),
    )
    .await;
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let error = &structured(&result)["error"];
    assert_eq!(error["kind"], "content_policy", "{error}");
    assert_eq!(error["categories"], json!(["sexual"]));
    assert_eq!(count(&upstream, EDITS).await, 0);

    let bodies = moderation_bodies(&upstream).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0]["input"],
        json!([
            {"type": "text", "text": "make it night"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(&png))}},
        ])
    );
    server.stop().await;
}

#[tokio::test]
async fn with_images_off_an_edit_checks_only_its_prompt() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(verdict(&[]))
        .mount(&upstream)
        .await;
    images(&upstream, EDITS, 1).await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "images = false").await;
    let png = png(16, 16).await;

    let result = call(
        &server,
        "edit_image",
        json!({"prompt": "make it night", "images": [format!("data:image/png;base64,{}", b64(&png))]}),
    )
    .await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(
        moderation_bodies(&upstream).await,
        [json!({"model": "omni-moderation-latest", "input": "make it night"})]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_check_with_no_provider_that_moderates_is_a_config_error() {
    let home = tempfile::tempdir().unwrap();
    // Without a key the offline mock is the only provider.
    let only_mock = "[moderation_check]\nenabled = true\n";
    let loaded = load_config_in(home.path(), only_mock).unwrap();
    let err = imagegen_mcp::engine::Engine::from_config(&loaded).unwrap_err();
    assert!(
        err.to_string()
            .contains("no configured provider has a moderation endpoint"),
        "{err}"
    );

    let unknown = "[moderation_check]\nenabled = true\nprovider = \"nowhere\"\n";
    let err = load_config_in(home.path(), unknown)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("moderation_check.provider") && err.contains("nowhere"),
        "{err}"
    );

    let named_mock = "[moderation_check]\nenabled = true\nprovider = \"mock\"\n";
    let loaded = load_config_in(home.path(), named_mock).unwrap();
    let err = imagegen_mcp::engine::Engine::from_config(&loaded).unwrap_err();
    assert!(
        err.to_string()
            .contains("provider `mock` has no moderation endpoint"),
        "{err}"
    );

    // The example file documents every key at its default.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/imagegen.example.toml");
    let cli = imagegen_mcp::config::CliOverrides {
        config: Some(example),
        ..Default::default()
    };
    let env = [("HOME", home.path().to_str().unwrap())];
    let loaded = imagegen_mcp::config::LoadedConfig::load_from(&cli, env, home.path()).unwrap();
    assert_eq!(loaded.config.moderation_check, Default::default());

    // Off (the default), nothing is asked of the providers.
    let off = load_config_in(home.path(), "").unwrap();
    let engine = imagegen_mcp::engine::Engine::from_config(&off).unwrap();
    assert!(engine.moderation().is_none());
}

#[tokio::test]
async fn turning_the_check_on_applies_on_reload_without_a_restart() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(verdict(&["violence"]))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(ResponseTemplate::new(200).set_body_json(testkit_openai::ok_body(1, 32)))
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), &upstream, "").await;
    let file = home.path().join("imagegen.toml");
    let enabled = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, enabled.replace("enabled = true", "enabled = false")).unwrap();
    let pid = server.pid.expect("the server's pid").to_string();
    let hup = || {
        let kill = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(kill.success());
    };
    hup();
    let args = json!({"prompt": "a duel at dawn"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Off: the call generates without asking the moderation endpoint.
    loop {
        let result = call(&server, "generate_image", args.clone()).await;
        if result.is_error == Some(false) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never turned off");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let checks = count(&upstream, MODERATIONS).await;
    let generated = count(&upstream, GENERATIONS).await;
    assert!(generated >= 1);

    std::fs::write(&file, enabled).unwrap();
    hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let result = call(&server, "generate_image", args.clone()).await;
        if result.is_error == Some(true) {
            assert_eq!(structured(&result)["error"]["kind"], "content_policy");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never turned on");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(count(&upstream, MODERATIONS).await > checks);
    server.stop().await;
}

#[tokio::test]
async fn a_flagged_prompt_moves_to_no_fallback_and_leaves_the_keys_active() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(verdict(&["violence"]))
        .mount(&upstream)
        .await;
    images(&upstream, GENERATIONS, 0).await;
    let home = tempfile::tempdir().unwrap();
    // The offline mock would serve anything the first provider fails, content_policy included.
    let server = start_full(
        home.path(),
        &upstream,
        "fallback = [\"offline\"]\nfallback_on_policy = true\n\
         [providers.offline]\nkind = \"mock\"",
        "",
    )
    .await;
    for _ in 0..3 {
        let result = call(&server, "generate_image", json!({"prompt": "a duel"})).await;
        assert_eq!(result.is_error, Some(true), "{result:?}");
        let out = structured(&result);
        assert_eq!(out["error"]["kind"], "content_policy", "{out}");
        assert!(out["route"].as_array().is_none_or(Vec::is_empty), "{out}");
    }
    let providers = call(&server, "list_providers", json!({})).await;
    let text = shown(&providers);
    assert!(
        text.contains("active") && !text.contains("cooling_down") && !text.contains("disabled"),
        "{text}"
    );
    server.stop().await;
}

#[test]
fn the_check_asks_the_named_provider_else_the_default_else_the_first_that_moderates() {
    let home = tempfile::tempdir().unwrap();
    let engine = |text: &str| {
        let file = home.path().join("choice.toml");
        std::fs::write(
            &file,
            format!(
                "{text}\n[output]\ndir = \"out\"\n\
                 [providers.zed]\nkind = \"openai\"\napi_key = \"sk-zed-0123456789\"\n\
                 [providers.alpha]\nkind = \"openai\"\napi_key = \"sk-alpha-0123456789\"\n\
                 [providers.offline]\nkind = \"mock\"\n"
            ),
        )
        .unwrap();
        let cli = imagegen_mcp::config::CliOverrides {
            config: Some(file),
            ..Default::default()
        };
        let env = [("HOME", home.path().to_str().unwrap())];
        let loaded = imagegen_mcp::config::LoadedConfig::load_from(&cli, env, home.path()).unwrap();
        imagegen_mcp::engine::Engine::from_config(&loaded).unwrap()
    };
    let chosen = |text: &str| {
        engine(text)
            .moderation()
            .map(|m| m.provider_name().to_string())
    };
    let on = "[moderation_check]\nenabled = true";
    assert_eq!(
        chosen(&format!("default_provider = \"zed\"\n{on}")).as_deref(),
        Some("zed"),
        "the default provider, when it moderates"
    );
    assert_eq!(
        chosen(&format!("default_provider = \"offline\"\n{on}")).as_deref(),
        Some("alpha"),
        "else the first by name that does"
    );
    assert_eq!(
        chosen(&format!(
            "default_provider = \"zed\"\n{on}\nprovider = \"alpha\""
        ))
        .as_deref(),
        Some("alpha"),
        "the one named wins"
    );
    assert_eq!(chosen("default_provider = \"zed\""), None, "off by default");
}
