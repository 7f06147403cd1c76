//! The real binary, driven over stdio by rmcp's client.

use crate::common::*;
use rmcp::model::{
    CallToolRequestParams, ProtocolVersion, ReadResourceRequestParams, ResourceContents,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, ResponseTemplate,
};

/// Collects the path of every `format` keyword whose value is not a standard format.
fn nonstandard_formats(schema: &Value, at: &str, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(format) = map.get("format").and_then(Value::as_str) {
                if !imagegen_mcp::server::STANDARD_FORMATS.contains(&format) {
                    out.push(format!("{at}: {format}"));
                }
            }
            for (key, value) in map {
                nonstandard_formats(value, &format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nonstandard_formats(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn structured(result: &rmcp::model::CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

#[tokio::test]
async fn both_protocol_revisions_list_the_tools_with_schemas() {
    for version in [ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2026_07_28] {
        let home = tempfile::tempdir().unwrap();
        let server = Server::start(home.path(), &[], version.clone()).await;
        let tools = server.client.list_all_tools().await.unwrap();
        let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "create_variation",
                "delete_image",
                "edit_image",
                "find_images",
                "gallery_page",
                "generate_image",
                "generate_images",
                "list_providers"
            ],
            "{version:?}"
        );
        // Every schema of every tool speaks standard JSON Schema: validating clients (Claude
        // Code) print a warning for each `format` outside the vocabulary, such as `uint64`.
        for tool in &tools {
            let mut schemas = vec![serde_json::to_value(&tool.input_schema).unwrap()];
            schemas.extend(
                tool.output_schema
                    .as_ref()
                    .map(|s| serde_json::to_value(s).unwrap()),
            );
            for schema in &schemas {
                let mut bad = Vec::new();
                nonstandard_formats(schema, "#", &mut bad);
                assert!(bad.is_empty(), "{}: {bad:?}", tool.name);
            }
        }
        let edit = tools.iter().find(|t| t.name == "edit_image").unwrap();
        let edit_input = serde_json::to_value(&edit.input_schema).unwrap();
        assert!(edit_input["properties"]["markup"]["description"].is_string());
        let gen = tools.iter().find(|t| t.name == "generate_image").unwrap();
        let input = serde_json::to_value(&gen.input_schema).unwrap();
        assert_eq!(
            input["properties"]["n"]["minimum"], 0,
            "{}",
            input["properties"]["n"]
        );
        for field in [
            "prompt",
            "provider",
            "model",
            "size",
            "quality",
            "n",
            "output_format",
            "background",
            "complexity",
            "frame_count",
            "frame_duration_ms",
            "svg",
            "delivery",
        ] {
            assert!(
                input["properties"][field]["description"].is_string(),
                "{field} documented"
            );
        }
        let output = serde_json::to_value(gen.output_schema.as_ref().unwrap()).unwrap();
        assert_eq!(output["type"], "object");
        assert!(
            output["properties"]["images"].is_object() && output["properties"]["error"].is_object()
        );
        let ann = gen.annotations.as_ref().unwrap();
        assert_eq!(
            (ann.read_only_hint, ann.open_world_hint),
            (Some(false), Some(true))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn mock_generation_saves_links_previews_and_reads_back_identically() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let out_s = out.to_str().unwrap();
    let server = Server::start(
        home.path(),
        &[("IMAGEGEN_OUTPUT__DIR", out_s)],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let result = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image").with_arguments(args(json!({
                "prompt": "a lighthouse at dusk", "size": "1536x1024", "n": 2
            }))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false));
    let s = structured(&result);
    assert!(s["error"].is_null());
    assert_eq!(s["provider"], "mock");
    let images = s["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);

    let inline: Vec<_> = result.content.iter().filter_map(|c| c.as_image()).collect();
    assert_eq!(inline.len(), 2, "one preview per image");
    let inline_total: usize = inline.iter().map(|i| i.data.len()).sum();
    assert!(
        inline_total <= 80_000,
        "previews within budget: {inline_total}"
    );
    let links: Vec<_> = result
        .content
        .iter()
        .filter_map(|c| c.as_resource_link())
        .collect();
    assert_eq!(links.len(), 2);
    assert!(
        !serde_json::to_string(&s).unwrap().contains(&inline[0].data),
        "no base64 in structuredContent"
    );

    for (image, link) in images.iter().zip(&links) {
        let file = std::fs::read(image["path"].as_str().unwrap()).unwrap();
        assert!(image["path"].as_str().unwrap().starts_with(out_s));
        assert_eq!(
            image["sha256"].as_str().unwrap(),
            hex(&Sha256::digest(&file))
        );
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(1536), Some(1024))
        );
        assert_eq!(link.uri, image["uri"].as_str().unwrap());
        let read = server
            .client
            .read_resource(ReadResourceRequestParams::new(link.uri.clone()))
            .await
            .unwrap();
        let ResourceContents::BlobResourceContents {
            blob, mime_type, ..
        } = &read.contents[0]
        else {
            panic!("blob expected");
        };
        assert_eq!(mime_type.as_deref(), Some("image/png"));
        assert_eq!(unb64(blob), file, "resources/read returns the saved bytes");
    }
    let listed = server.client.list_all_resources().await.unwrap();
    let uris: Vec<&str> = listed.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(
        uris.len(),
        5,
        "the status, the usage, the gallery app and both images: {uris:?}"
    );
    assert_eq!(
        uris[..3],
        [
            "imagegen://status",
            "imagegen://usage",
            "ui://imagegen/gallery"
        ]
    );

    let missing = server
        .client
        .read_resource(ReadResourceRequestParams::new(
            "imagegen://images/../../etc/passwd",
        ))
        .await;
    assert!(missing.is_err(), "path escapes are not resources");
    server.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn bad_requests_are_structured_tool_errors_and_the_server_keeps_serving() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2026_07_28).await;
    let cases = [
        (json!({"prompt": "x", "provider": "nope"}), "provider"),
        (
            json!({"prompt": "x", "model": "gpt-image-2", "size": "1000x1000"}),
            "size",
        ),
        (
            json!({"prompt": "x", "output_format": "bmp"}),
            "output_format",
        ),
        (json!({"prompt": "  "}), "prompt"),
        (json!({"prompt": "x", "n": "two"}), "n"),
        (json!({"prompt": "x", "resolution": "8k"}), "resolution"),
        (
            json!({"prompt": "x", "size": "64x64", "aspect_ratio": "1:1"}),
            "size",
        ),
    ];
    for (arguments, param) in cases {
        let result = server
            .client
            .call_tool(CallToolRequestParams::new("generate_image").with_arguments(args(arguments)))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true));
        let error = &structured(&result)["error"];
        assert_eq!(error["kind"], "invalid_request");
        assert_eq!(error["param"], param);
        assert_eq!(error["retryable"], false);
        assert!(structured(&result)["images"].as_array().unwrap().is_empty());
    }
    let ok = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image")
                .with_arguments(args(json!({"prompt": "still alive", "size": "64x64"}))),
        )
        .await
        .unwrap();
    assert_eq!(ok.is_error, Some(false));
    server.stop().await;
}

#[tokio::test]
async fn a_ratio_becomes_a_size_and_the_result_says_what_was_sent() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2026_07_28).await;
    let result = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image").with_arguments(args(json!({
                "prompt": "a wide harbour",
                "aspect_ratio": "16:9",
                "delivery": "link",
            }))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false));
    let out = structured(&result);
    let image = &out["images"][0];
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(1024), Some(576))
    );
    assert_eq!(out["sent"]["size"], "1024x576", "{out}");
    assert_eq!(out["sent"]["model"], "mock-image-1");
    assert!(
        out["sent"].get("prompt").is_none(),
        "the prompt is the caller's own"
    );
    server.stop().await;
}

#[tokio::test]
async fn mock_failure_knobs_reach_the_client_as_structured_errors() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("imagegen.toml"),
        "default_provider = \"flaky\"\n[providers.flaky]\nkind = \"mock\"\nfail_rate = 1.0\nfail_with = \"rate_limited\"\n",
    )
    .unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2025_11_25).await;
    let result = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image")
                .with_arguments(args(json!({"prompt": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let error = &structured(&result)["error"];
    assert_eq!(
        (error["kind"].as_str(), error["retryable"].as_bool()),
        (Some("rate_limited"), Some(true))
    );
    assert_eq!(error["provider"], "flaky");
    assert!(error["retry_after_s"].as_u64().is_some());
    server.stop().await;
}

#[tokio::test]
async fn openai_compatible_server_gets_the_right_request_and_no_secret_leaks() {
    let upstream = MockServer::start().await;
    let png = png(1024, 1024).await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header(
            "authorization",
            format!("Bearer {SENTINEL_KEY}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-request-id", "req_e2e_1")
                .set_body_json(json!({"created": 1, "data": [{"b64_json": b64(&png)}],
                    "usage": {"input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170}})),
        )
        .mount(&upstream)
        .await;
    let base = format!("{}/v1", upstream.uri());
    let home = tempfile::tempdir().unwrap();
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
        ("RUST_LOG", "trace"),
    ];
    let server = Server::start(home.path(), &envs, ProtocolVersion::V_2025_11_25).await;

    let invalid = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image")
                .with_arguments(args(json!({"prompt": "x", "size": "999x999"}))),
        )
        .await
        .unwrap();
    assert_eq!(invalid.is_error, Some(true));
    assert!(
        upstream.received_requests().await.unwrap().is_empty(),
        "invalid size refused before sending"
    );

    let result = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image").with_arguments(args(json!({
                "prompt": "a lighthouse at dusk", "size": "1536x1024"
            }))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let s = structured(&result);
    assert_eq!(
        (s["provider"].as_str(), s["model"].as_str()),
        (Some("openai"), Some("gpt-image-2.6-flare"))
    );
    assert_eq!(s["request_id"], "req_e2e_1");
    assert_eq!(s["usage"]["total_tokens"], 4170);
    let requests = upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["model"], "gpt-image-2.6-flare");
    assert_eq!(body["size"], "1536x1024");
    assert_eq!(body["prompt"], "a lighthouse at dusk");
    for rejected in ["response_format", "style"] {
        assert!(
            body.get(rejected).is_none(),
            "{rejected} must not be sent to GPT image models"
        );
    }

    // An error path too: the upstream now refuses the key.
    upstream.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})))
        .mount(&upstream)
        .await;
    let failed = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image")
                .with_arguments(args(json!({"prompt": "x"}))),
        )
        .await
        .unwrap();
    assert_eq!(structured(&failed)["error"]["kind"], "auth");
    let list = server
        .client
        .call_tool(CallToolRequestParams::new("list_providers"))
        .await
        .unwrap();

    let stderr = server.stop().await;
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "trace logging was on"
    );
    for text in [
        serde_json::to_string(&result).unwrap(),
        serde_json::to_string(&invalid).unwrap(),
        serde_json::to_string(&failed).unwrap(),
        serde_json::to_string(&list).unwrap(),
        stderr,
    ] {
        assert!(!text.contains(SENTINEL_KEY), "the key leaked");
        assert!(
            !text.contains("SENTINEL-do-not-leak"),
            "part of the key leaked"
        );
    }
}
