//! A hostile upstream against the real binary: every field of its answers echoes the key and
//! the base URL's password. Neither may reach a tool result, the status, stdout, stderr at
//! `trace`, or any file the server writes.

use crate::common::*;
use rmcp::model::{CallToolRequestParams, ProtocolVersion, ReadResourceRequestParams};
use serde_json::json;
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

const PASSWORD: &str = "SENTINELPASS-9f8e7d6c";

/// Every file under `dir`, recursively, as text (lossy).
fn files_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&files_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

#[tokio::test]
async fn an_upstream_echoing_the_key_everywhere_leaks_it_nowhere() {
    let upstream = MockServer::start().await;
    let echo = format!("Bearer {SENTINEL_KEY} user:{PASSWORD}");
    let error = |status: u16| {
        ResponseTemplate::new(status)
            .insert_header("x-request-id", echo.as_str())
            .set_body_json(json!({"error": {
                "message": format!("{} {echo}", "x".repeat(190)),
                "type": echo, "param": echo, "code": echo}}))
    };
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(error(400))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    // A 200 of the wrong shape that quotes the request's headers.
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-request-id", echo.as_str())
                .set_body_string(format!(
                    "{{\"headers\": {{\"authorization\": \"{echo}\"}}, \"data\": 7}}"
                )),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(error(401))
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    let port = upstream.address().port();
    let base = format!("http://user:{PASSWORD}@127.0.0.1:{port}/v1");
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
        ("RUST_LOG", "trace"),
        ("IMAGEGEN_CATALOG__CHECK_UPSTREAM", "true"),
    ];
    let server = Server::start(home.path(), &envs, ProtocolVersion::V_2025_11_25).await;
    let mut shown = String::new();
    for _ in 0..2 {
        let result = server
            .client
            .call_tool(
                CallToolRequestParams::new("generate_image")
                    .with_arguments(args(json!({"prompt": "a lighthouse"}))),
            )
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true), "{result:?}");
        shown.push_str(&serde_json::to_string(&result).unwrap());
    }
    let status = server
        .client
        .read_resource(ReadResourceRequestParams::new("imagegen://status"))
        .await
        .unwrap();
    shown.push_str(&serde_json::to_string(&status).unwrap());
    let listed = server
        .client
        .call_tool(CallToolRequestParams::new("list_providers"))
        .await
        .unwrap();
    shown.push_str(&serde_json::to_string(&listed).unwrap());
    let stderr = server.stop().await;
    let posts = upstream
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 2, "both answers were received");
    assert!(
        shown.contains("xxxxxxxxxx"),
        "the upstream's message reached the result, scrubbed"
    );
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "logs at trace were written"
    );
    let written = files_text(home.path());
    for (what, text) in [
        ("tool results", &shown),
        ("stderr", &stderr),
        ("files", &written),
    ] {
        assert!(!text.contains(SENTINEL_KEY), "the key leaked into {what}");
        assert!(
            !text.contains("SENTINEL-do-not-leak"),
            "part of the key leaked into {what}"
        );
        assert!(!text.contains(PASSWORD), "the password leaked into {what}");
    }
}
