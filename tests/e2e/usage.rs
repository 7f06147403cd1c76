//! What calls cost and the usage ledger, through the real binary: costs in results, one
//! ledger line per call that survives concurrency and a killed process, `imagegen://usage`
//! and `imagegen-mcp usage`.

use crate::common::*;
use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, ProtocolVersion, ReadResourceRequestParams, ResourceContents,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

fn structured(result: &rmcp::model::CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

/// Every line of the ledger files under `dir`, parsed; panics on a torn line.
fn ledger_lines(dir: &std::path::Path) -> Vec<Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                lines.push(
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("torn ledger line {line:?}: {e}")),
                );
            }
        }
    }
    lines
}

fn ledger_dir(home: &std::path::Path) -> std::path::PathBuf {
    home.join(".local/share/imagegen-mcp/images/usage")
}

#[tokio::test]
async fn calls_are_costed_from_usage_ledgered_and_summarised() {
    let upstream = MockServer::start().await;
    let png = png(1024, 1024).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    // The first call reports its usage, split by kind; the second reports none.
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1, "data": [{"b64_json": b64}],
            "usage": {"input_tokens": 20, "output_tokens": 6000, "total_tokens": 6020,
                      "input_tokens_details": {"text_tokens": 20, "image_tokens": 0}}})))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1, "data": [{"b64_json": b64}]})))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": null}})))
        .mount(&upstream)
        .await;
    let base = format!("{}/v1", upstream.uri());
    let home = tempfile::tempdir().unwrap();
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    let server = Server::start(home.path(), &envs, ProtocolVersion::V_2025_11_25).await;
    let call = |quality: &str| {
        CallToolRequestParams::new("generate_image").with_arguments(args(json!({
            "prompt": "a lighthouse", "size": "1024x1024", "quality": quality,
            "model": "gpt-image-2"
        })))
    };

    let first = structured(&server.client.call_tool(call("high")).await.unwrap());
    let cost = &first["cost"];
    assert_eq!(cost["basis"], "usage", "{first}");
    let expected = (20.0 * 5.0 + 6000.0 * 30.0) / 1e6;
    assert!(
        (cost["usd"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{cost}"
    );
    assert!(
        (cost["estimate_usd"].as_f64().unwrap() - 0.19).abs() < 1e-9,
        "{cost}"
    );

    // No usage: the estimate stands in, corrected by the call observed before it.
    let second = structured(&server.client.call_tool(call("high")).await.unwrap());
    let cost = &second["cost"];
    assert_eq!(cost["basis"], "estimate", "{second}");
    let corrected = (0.19 + expected) / 2.0;
    assert!(
        (cost["usd"].as_f64().unwrap() - corrected).abs() < 1e-9,
        "{cost}"
    );
    assert!(cost["note"].as_str().unwrap().contains("no usage"));

    // Refused by the provider: not billed, cost 0.
    let third = server.client.call_tool(call("high")).await.unwrap();
    assert_eq!(third.is_error, Some(true));

    let usage = server
        .client
        .read_resource(ReadResourceRequestParams::new("imagegen://usage"))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &usage.contents[0] else {
        panic!("usage is JSON text");
    };
    let overview: Value = serde_json::from_str(text).unwrap();
    let month = &overview["month"]["total"];
    assert_eq!(
        (month["calls"].as_u64(), month["failed"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(month["images"], 2);
    let spent = month["cost_usd"].as_f64().unwrap();
    assert!((spent - (expected + corrected)).abs() < 1e-9, "{overview}");
    assert!((month["estimated_usd"].as_f64().unwrap() - corrected).abs() < 1e-9);
    assert_eq!(overview["today"]["total"]["calls"], 3);
    let stderr = server.stop().await;
    assert!(!stderr.contains(SENTINEL_KEY), "the key leaked to the log");

    let lines = ledger_lines(&ledger_dir(home.path()));
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ledger_text = serde_json::to_string(&lines).unwrap();
    assert!(
        !ledger_text.contains(SENTINEL_KEY),
        "the key leaked to the ledger"
    );
    let fingerprint = imagegen_providers::fingerprint(SENTINEL_KEY);
    assert!(
        lines.iter().all(|l| l["key"] == fingerprint.as_str()),
        "{lines:?}"
    );
    let refused = lines.iter().find(|l| l["outcome"] != "ok").unwrap();
    assert_eq!(
        (
            refused["outcome"].as_str(),
            refused["billing"].as_str(),
            refused["cost_usd"].as_f64()
        ),
        (Some("invalid_request"), Some("not_billed"), Some(0.0))
    );
    assert_eq!(lines[0]["tokens"]["output"], 6000);

    // The CLI reads the same ledger.
    let out = binary(home.path(), &[])
        .args(["usage", "--by", "model", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["groups"]["gpt-image-2"]["calls"], 3);
    assert!((report["total"]["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-9);
    let table = binary(home.path(), &[])
        .args(["usage", "--by", "caller"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("caller") && table.contains("total"),
        "{table}"
    );
    let bad = binary(home.path(), &[])
        .args(["usage", "--since", "yesterday"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YYYY-MM-DD"));
}

#[tokio::test]
async fn ledger_lines_survive_64_concurrent_calls_and_a_killed_process() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("imagegen.toml"),
        "default_provider = \"mock\"\n[providers.mock]\nkind = \"mock\"\nlatency_ms = 40\n\
         [models.\"mock-image-1\".prices]\nper_image = 0.04\n",
    )
    .unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2025_11_25).await;
    let call = |i: usize| {
        CallToolRequestParams::new("generate_image").with_arguments(args(json!({
            "prompt": format!("tile {i}"), "size": "64x64", "delivery": "link"
        })))
    };
    let results =
        futures::future::join_all((0..64).map(|i| server.client.call_tool(call(i)))).await;
    let mut spent = 0.0;
    for result in &results {
        let result = result.as_ref().unwrap();
        assert_eq!(result.is_error, Some(false), "{result:?}");
        let cost = &structured(result)["cost"];
        assert_eq!(cost["basis"], "usage");
        spent += cost["usd"].as_f64().unwrap();
    }
    assert!((spent - 64.0 * 0.04).abs() < 1e-9);
    assert_eq!(ledger_lines(&ledger_dir(home.path())).len(), 64);

    // Killed while 64 more are in flight: every line written is whole, and every call whose
    // result came back has its line.
    let pid = server.pid.unwrap();
    let calls = futures::future::join_all((64..128).map(|i| {
        let client = &server.client;
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                client.call_tool(call(i)),
            )
            .await
        }
    }));
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    };
    let (outcomes, ()) = tokio::join!(calls, killer);
    let answered = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Ok(r)) if r.is_error == Some(false)))
        .count();
    let lines = ledger_lines(&ledger_dir(home.path()));
    assert!(
        lines.len() >= 64 + answered,
        "{} lines for {} answered calls",
        lines.len(),
        64 + answered
    );
    assert!(lines.len() <= 128);
    let _ = server.stderr.await;
}

#[tokio::test]
async fn a_restarted_server_counts_the_ledger_against_its_budget() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("imagegen.toml"),
        "default_provider = \"mock\"\n[providers.mock]\nkind = \"mock\"\n\
         [models.\"mock-image-1\".prices]\nper_image = 0.04\n[budget]\ndaily_usd = 1.0\n",
    )
    .unwrap();
    // What an earlier process spent today, as its ledger recorded it.
    let dir = ledger_dir(home.path());
    std::fs::create_dir_all(&dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let day = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let line = json!({
        "time": format!("{day}T00:00:01Z"), "provider": "mock", "model": "mock-image-1",
        "images": 1, "cost_usd": 0.98, "basis": "usage", "billing": "billed", "outcome": "ok"
    });
    std::fs::write(dir.join(format!("{day}.jsonl")), format!("{line}\n")).unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2025_11_25).await;
    let result = server
        .client
        .call_tool(
            CallToolRequestParams::new("generate_image").with_arguments(args(json!({
                "prompt": "one more", "size": "64x64"
            }))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let error = &structured(&result)["error"];
    assert_eq!(error["kind"], "budget_exceeded", "{error}");
    assert!(
        (error["spent_usd"].as_f64().unwrap() - 0.98).abs() < 1e-6,
        "{error}"
    );
    server.stop().await;
}
