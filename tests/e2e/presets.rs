//! Prompt presets through the real binary: the upstream sees the templated prompt, the result
//! shows the prompt as given, as sent and as the provider revised it, the precedence of call,
//! preset, provider defaults and `[defaults]` holds, and presets follow the config file.

use std::time::{Duration, Instant};

use crate::common::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProtocolVersion, ReadResourceRequestParams,
    ResourceContents,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

fn write_config(home: &std::path::Path, toml: &str) -> String {
    let file = home.join("imagegen.toml");
    std::fs::write(&file, toml).unwrap();
    file.to_str().unwrap().to_string()
}

async fn call(server: &Server, tool: &str, arguments: Value) -> CallToolResult {
    server
        .client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments)))
        .await
        .unwrap()
}

fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

fn texts(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn presets_listed(server: &Server) -> Value {
    let listed = server
        .client
        .call_tool(CallToolRequestParams::new("list_providers"))
        .await
        .unwrap();
    structured(&listed)["presets"].clone()
}

async fn read_meta(server: &Server, uri: &str) -> Value {
    let read = server
        .client
        .read_resource(ReadResourceRequestParams::new(format!("{uri}/meta")))
        .await
        .unwrap();
    match read.contents.into_iter().next().unwrap() {
        ResourceContents::TextResourceContents { text, .. } => serde_json::from_str(&text).unwrap(),
        other => panic!("the sidecar is text: {other:?}"),
    }
}

/// An OpenAI-compatible upstream that revises every prompt, and a server over it whose
/// `[defaults]`, provider defaults and presets each set `quality` (and some of the rest).
async fn openai_with_presets() -> (MockServer, Server, tempfile::TempDir) {
    let upstream = MockServer::start().await;
    let png = png(64, 64).await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1,
            "data": [{"b64_json": b64(&png), "revised_prompt": "REVISED: a fox in watercolor"}]
        })))
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    let file = write_config(
        home.path(),
        &format!(
            r#"default_provider = "openai"
[defaults]
quality = "low"
background = "opaque"
moderation = "low"
[providers.openai]
base_url = "{}/v1"
api_key = "{SENTINEL_KEY}"
[providers.openai.defaults]
quality = "medium"
background = "auto"
[providers.offline]
kind = "mock"
[presets.watercolor]
template = "{{prompt}}, watercolor, soft light"
description = "loose watercolor"
provider = "openai"
model = "gpt-image-2"
quality = "high"
style = "vivid"
[presets.plain]
template = "{{prompt}}"
"#,
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
    (upstream, server, home)
}

async fn bodies(upstream: &MockServer) -> Vec<Value> {
    upstream
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_preset_shapes_the_prompt_sent_and_the_result_shows_all_three_prompts() {
    let (upstream, server, _home) = openai_with_presets().await;
    let result = call(
        &server,
        "generate_image",
        json!({"prompt": "a fox", "preset": "watercolor"}),
    )
    .await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let body = &bodies(&upstream).await[0];
    assert_eq!(body["prompt"], "a fox, watercolor, soft light");
    assert_eq!(body["model"], "gpt-image-2", "the preset's model");
    assert!(
        body.get("style").is_none(),
        "GPT image models take no style"
    );

    let s = structured(&result);
    assert_eq!(s["prompt"], "a fox");
    assert_eq!(s["prompt_sent"], "a fox, watercolor, soft light");
    assert_eq!(s["revised_prompt"], "REVISED: a fox in watercolor");
    assert_eq!(s["preset"], "watercolor");
    let notes: Vec<&str> = s["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes[0].starts_with(
            "preset `watercolor` applied: the prompt was sent as its template `{prompt}, \
             watercolor, soft light`"
        ) && notes[0].contains("it set `quality`"),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("preset `watercolor`'s `style` was not sent")),
        "{notes:?}"
    );
    let text = texts(&result);
    assert!(text.contains("Preset `watercolor`"), "{text}");

    let uri = s["images"][0]["uri"].as_str().unwrap();
    let meta = read_meta(&server, uri).await;
    assert_eq!(
        (&meta["prompt"], &meta["prompt_sent"], &meta["preset"]),
        (
            &json!("a fox"),
            &json!("a fox, watercolor, soft light"),
            &json!("watercolor")
        )
    );
    assert_eq!(meta["revised_prompt"], "REVISED: a fox in watercolor");

    // Without a preset nothing changes, and the result says so by the prompts being equal.
    let plain = structured(&call(&server, "generate_image", json!({"prompt": "a fox"})).await);
    assert_eq!(
        (&plain["prompt"], &plain["prompt_sent"]),
        (&json!("a fox"), &json!("a fox"))
    );
    assert!(plain.get("preset").is_none(), "{plain}");
    assert!(
        !plain["notes"].to_string().contains("preset"),
        "{}",
        plain["notes"]
    );
    let stderr = server.stop().await;
    assert!(!stderr.contains("SENTINEL"), "{stderr}");
}

#[tokio::test]
async fn call_values_beat_the_preset_which_beats_provider_defaults_and_defaults() {
    let (upstream, server, _home) = openai_with_presets().await;
    let calls = [
        // The preset's quality over the provider's; the provider's background over
        // [defaults]'; [defaults]' moderation where nothing else sets it.
        (
            json!({"prompt": "a", "preset": "watercolor"}),
            ("high", "auto", "low", "gpt-image-2"),
        ),
        // The call's own quality and model over the preset's.
        (
            json!({"prompt": "b", "preset": "watercolor", "quality": "auto",
                   "model": "gpt-image-2.6-flare", "moderation": "auto"}),
            ("auto", "auto", "auto", "gpt-image-2.6-flare"),
        ),
        // A preset without options leaves the provider's defaults in force.
        (
            json!({"prompt": "c", "preset": "plain"}),
            ("medium", "auto", "low", "gpt-image-2.6-flare"),
        ),
        // The call's own background over the provider's.
        (
            json!({"prompt": "d", "background": "opaque"}),
            ("medium", "opaque", "low", "gpt-image-2.6-flare"),
        ),
    ];
    for (arguments, _) in &calls {
        let result = call(&server, "generate_image", arguments.clone()).await;
        assert_eq!(result.is_error, Some(false), "{arguments}: {result:?}");
    }
    let bodies = bodies(&upstream).await;
    assert_eq!(bodies.len(), calls.len());
    for ((arguments, (quality, background, moderation, model)), body) in calls.iter().zip(&bodies) {
        assert_eq!(
            (
                &body["quality"],
                &body["background"],
                &body["moderation"],
                &body["model"]
            ),
            (
                &json!(quality),
                &json!(background),
                &json!(moderation),
                &json!(model)
            ),
            "{arguments} sent {body}"
        );
    }

    // The preset's model goes with its provider: a call naming another gets that one's own.
    let other = structured(
        &call(
            &server,
            "generate_image",
            json!({"prompt": "e", "preset": "watercolor", "provider": "offline", "size": "64x64"}),
        )
        .await,
    );
    assert_eq!(
        (&other["provider"], &other["model"]),
        (&json!("offline"), &json!("mock-image-1")),
        "{other}"
    );
    assert_eq!(other["prompt_sent"], "e, watercolor, soft light");
    assert_eq!(
        bodies.len(),
        upstream.received_requests().await.unwrap().len()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_preset_is_refused_by_name_before_anything_is_sent() {
    let (upstream, server, _home) = openai_with_presets().await;
    let png = png(64, 64).await;
    let image = format!("data:image/png;base64,{}", b64(&png));
    for (tool, arguments) in [
        ("generate_image", json!({"prompt": "a", "preset": "oil"})),
        (
            "edit_image",
            json!({"prompt": "a", "images": [image], "preset": "oil"}),
        ),
    ] {
        let result = call(&server, tool, arguments).await;
        assert_eq!(result.is_error, Some(true), "{tool}");
        let error = &structured(&result)["error"];
        assert_eq!(
            (&error["kind"], &error["param"]),
            (&json!("invalid_request"), &json!("preset")),
            "{error}"
        );
        assert_eq!(
            error["message"], "unknown preset `oil`; configured: plain, watercolor",
            "{error}"
        );
    }
    // A preset template does not make an empty prompt a prompt.
    let empty = call(
        &server,
        "generate_image",
        json!({"prompt": " ", "preset": "watercolor"}),
    )
    .await;
    assert_eq!(structured(&empty)["error"]["param"], "prompt");
    assert!(upstream.received_requests().await.unwrap().is_empty());
    server.stop().await;
}

/// Polls `list_providers` until `done` holds for its presets (a reload landed).
async fn wait_presets(server: &Server, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let presets = presets_listed(server).await;
        if done(&presets) {
            return presets;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the reload never showed: {presets}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn presets_are_listed_follow_the_config_file_and_a_changed_template_misses_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let config = |template: &str, extra: &str| {
        format!(
            "default_provider = \"mock\"\n[reload]\ndebounce_ms = 50\n[cache]\nenabled = true\n\
             [providers.mock]\n[presets.sketch]\ntemplate = \"{template}\"\n\
             description = \"pencil sketch\"\nprovider = \"mock\"\nmodel = \"mock-image-1\"\n\
             size = \"64x48\"\n{extra}"
        )
    };
    let file = write_config(home.path(), &config("{prompt}, pencil sketch", ""));
    let server = Server::start_with(
        home.path(),
        &["--config", &file],
        &[],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let listed = presets_listed(&server).await;
    assert_eq!(
        listed,
        json!({"sketch": {"template": "{prompt}, pencil sketch", "description": "pencil sketch",
                          "provider": "mock", "model": "mock-image-1", "size": "64x48"}})
    );

    let first = structured(
        &call(
            &server,
            "generate_image",
            json!({"prompt": "a fox", "preset": "sketch"}),
        )
        .await,
    );
    assert_eq!(first["prompt_sent"], "a fox, pencil sketch", "{first}");
    assert_eq!(
        (&first["images"][0]["width"], &first["images"][0]["height"]),
        (&json!(64), &json!(48)),
        "the preset's size"
    );
    let again = structured(
        &call(
            &server,
            "generate_image",
            json!({"prompt": "a fox", "preset": "sketch"}),
        )
        .await,
    );
    assert_eq!(
        again["cached"], true,
        "the same request is served from the cache"
    );
    assert_eq!(
        (&again["prompt"], &again["prompt_sent"], &again["preset"]),
        (
            &json!("a fox"),
            &json!("a fox, pencil sketch"),
            &json!("sketch")
        )
    );

    // Edit the file: the template changes and a preset is added.
    std::fs::write(
        &file,
        config(
            "{prompt}, charcoal sketch",
            "[presets.ink]\ntemplate = \"ink drawing of {prompt}\"\n",
        ),
    )
    .unwrap();
    let listed = wait_presets(&server, |p| p.get("ink").is_some()).await;
    assert_eq!(listed["sketch"]["template"], "{prompt}, charcoal sketch");
    let changed = structured(
        &call(
            &server,
            "generate_image",
            json!({"prompt": "a fox", "preset": "sketch"}),
        )
        .await,
    );
    assert_eq!(changed["prompt_sent"], "a fox, charcoal sketch");
    assert!(
        changed.get("cached").is_none(),
        "a new template is a new request: {changed}"
    );
    let png = png(64, 64).await;
    let image = format!("data:image/png;base64,{}", b64(&png));
    let edited = call(
        &server,
        "edit_image",
        json!({"prompt": "a fox", "images": [image], "preset": "ink"}),
    )
    .await;
    assert_eq!(edited.is_error, Some(false), "{edited:?}");
    let edited = structured(&edited);
    assert_eq!(
        (&edited["prompt"], &edited["prompt_sent"], &edited["preset"]),
        (
            &json!("a fox"),
            &json!("ink drawing of a fox"),
            &json!("ink")
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_items_take_their_own_preset_over_the_shared_one() {
    let home = tempfile::tempdir().unwrap();
    let file = write_config(
        home.path(),
        "default_provider = \"mock\"\n[providers.mock]\n[presets.a]\ntemplate = \"A: {prompt}\"\n\
         [presets.b]\ntemplate = \"B: {prompt}\"\nsize = \"32x32\"\n",
    );
    let server = Server::start_with(
        home.path(),
        &["--config", &file],
        &[],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let result = call(
        &server,
        "generate_images",
        json!({"preset": "a", "size": "64x64", "items": [
            {"prompt": "one"},
            {"prompt": "two", "preset": "b"},
            {"prompt": "three", "preset": "nope"}
        ]}),
    )
    .await;
    let s = structured(&result);
    let items = s["results"].as_array().unwrap();
    assert_eq!(
        (&items[0]["prompt_sent"], &items[0]["preset"]),
        (&json!("A: one"), &json!("a"))
    );
    assert_eq!(
        (
            &items[1]["prompt"],
            &items[1]["prompt_sent"],
            &items[1]["preset"]
        ),
        (&json!("two"), &json!("B: two"), &json!("b"))
    );
    assert_eq!(
        items[1]["images"][0]["width"], 64,
        "the batch's shared size is the call's own: it beats the preset's"
    );
    assert_eq!(items[2]["error"]["param"], "preset", "{}", items[2]);
    assert_eq!(s["summary"]["succeeded"], 2);
    let text = texts(&result);
    assert!(text.contains("Item 2 (preset `b`)"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn the_command_line_takes_a_preset_and_config_show_and_check_know_presets() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let mut cmd = binary(home.path(), &[]);
        cmd.args(args);
        async move { cmd.output().await.unwrap() }
    };
    let file = write_config(
        home.path(),
        "[providers.mock]\n[presets.poster]\ntemplate = \"poster: {prompt}\"\nsize = \"48x48\"\n",
    );
    let args = |rest: &[&str]| {
        let mut all: Vec<String> = vec!["--config".into(), file.clone()];
        all.extend(rest.iter().map(|s| s.to_string()));
        all
    };
    let out = run(args(&["generate", "a fox", "--preset", "poster", "--json"])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&json["prompt"], &json["prompt_sent"], &json["preset"]),
        (&json!("a fox"), &json!("poster: a fox"), &json!("poster"))
    );
    assert_eq!(json["images"][0]["width"], 48);

    let out = run(args(&["generate", "a fox", "--preset", "nope"])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown preset `nope`; configured: poster"),
        "{stderr}"
    );

    let out = run(args(&["config", "show"])).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("[presets.poster]")
            && shown.contains("template = \"poster: {prompt}\"  # file"),
        "{shown}"
    );

    std::fs::write(
        &file,
        "[providers.mock]\n[presets.broken]\ntemplate = \"poster, no placeholder\"\n",
    )
    .unwrap();
    let out = run(args(&["config", "check"])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`presets.broken.template`") && stderr.contains("must contain {prompt}"),
        "{stderr}"
    );
}
