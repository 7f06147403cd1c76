//! What an operator of `serve --http` relies on: per-caller limits that never touch a
//! provider, metrics that move with the calls (behind their own token when configured), and
//! JSON logs that name the caller and the request id, never a secret.

use std::time::{Duration, Instant};

use imagegen_testkit::{
    fake::{FakeUpstream, Reply},
    openai::{error_body, ok_body},
};
use rmcp::model::{ProtocolVersion, ReadResourceRequestParams, ResourceContents};
use serde_json::{json, Value};

use crate::common::{
    http_server::{call, connect, series, token_file, HttpServer},
    Server, SENTINEL_KEY,
};

/// Bearer tokens that must never appear in any output.
const ALICE: &str = "imagegen-SENTINEL-alice-4f1e22c0";
const BOB: &str = "imagegen-SENTINEL-bob-9a07d3b1";
const SCRAPER: &str = "imagegen-SENTINEL-metrics-66c1e0aa";
const SCRAPER_ROTATED: &str = "imagegen-SENTINEL-metrics-rotated-0d9b";

/// `[[server.auth.tokens]]` for alice and bob, their tokens in files under `dir`; `alice`
/// holds extra keys for alice's entry.
fn tokens(dir: &std::path::Path, alice: &str) -> String {
    let a = token_file(dir, "alice", ALICE);
    let b = token_file(dir, "bob", BOB);
    format!(
        "[[server.auth.tokens]]\nname = \"alice\"\ntoken_file = {:?}\n{alice}\n\
         [[server.auth.tokens]]\nname = \"bob\"\ntoken_file = {:?}\n",
        a.to_str().unwrap(),
        b.to_str().unwrap()
    )
}

/// An OpenAI provider on `fake` with `keys`, falling back to the mock; `top` goes first.
fn openai(fake: &FakeUpstream, keys: &[&str], top: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!(
        "default_provider = \"openai\"\n{top}\n[output]\ndelivery = \"link\"\n\
         [providers.openai]\nbase_url = \"{}\"\napi_keys = [{}]\nfallback = [\"mock\"]\n\
         retry_base_ms = 50\n[providers.mock]\nkind = \"mock\"\n",
        fake.base(),
        keys.join(", ")
    )
}

fn error_kind(result: &rmcp::model::CallToolResult) -> Option<String> {
    let structured = result.structured_content.as_ref()?;
    Some(structured.pointer("/error/kind")?.as_str()?.to_string())
}

/// The `imagegen://status` resource as JSON.
async fn status(
    client: &rmcp::service::RunningService<rmcp::RoleClient, crate::common::VersionedClient>,
) -> Value {
    let read = client
        .read_resource(ReadResourceRequestParams::new("imagegen://status"))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("status is text: {read:?}");
    };
    serde_json::from_str(text).unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains("SENTINEL"),
        "a secret leaked in {what}: {text}"
    );
}

#[tokio::test]
async fn a_callers_own_limit_refuses_before_any_provider_and_leaves_others_alone() {
    let secrets = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start(vec![Reply::json(&ok_body(1, 8))]).await;
    let limited = openai(
        &fake,
        &[SENTINEL_KEY],
        &format!(
            "{}[server.limits.per_caller]\nrequests_per_minute = 1000\n",
            tokens(secrets.path(), "requests_per_minute = 1")
        ),
    );
    let server = HttpServer::start(&limited, &[], &[]).await;
    let alice = connect(&server.mcp(), ALICE, &[]).await;
    let bob = connect(&server.mcp(), BOB, &[]).await;
    let prompt = json!({"prompt": "a lighthouse"});

    let first = call(&alice, "generate_image", prompt.clone()).await;
    assert_ne!(first.is_error, Some(true), "{first:?}");
    assert_eq!(fake.count(), 1);

    let refused = call(&alice, "generate_image", prompt.clone()).await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    assert_eq!(error_kind(&refused).as_deref(), Some("rate_limited"));
    let error = &refused.structured_content.as_ref().unwrap()["error"];
    assert!(
        error["retry_after_s"]
            .as_u64()
            .is_some_and(|s| (1..=60).contains(&s)),
        "{error}"
    );
    let message = error["message"].as_str().unwrap();
    for says in [
        "caller `alice`",
        "own limit",
        "requests_per_minute of [[server.auth.tokens]] `alice`",
    ] {
        assert!(message.contains(says), "{says}: {message}");
    }
    // It never reached the engine: no upstream request, no provider named, no fallback.
    assert_eq!(fake.count(), 1, "the refused call reached the upstream");
    assert!(error.get("provider").is_none(), "{error}");
    let batch = call(&alice, "generate_images", json!({"prompts": ["a", "b"]})).await;
    assert_eq!(
        error_kind(&batch).as_deref(),
        Some("rate_limited"),
        "{batch:?}"
    );
    assert_eq!(fake.count(), 1);

    // Bob has an allowance of his own.
    let other = call(&bob, "generate_image", prompt.clone()).await;
    assert_ne!(other.is_error, Some(true), "{other:?}");
    assert_eq!(fake.count(), 2);

    // The provider is none the worse: its key is active, its circuit healthy, and the mock
    // (its fallback) was never asked.
    let view = status(&bob).await;
    let openai = view["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .unwrap();
    assert_eq!(openai["keys"][0]["state"], "active", "{openai}");
    assert_eq!(openai["health"]["state"], "healthy", "{openai}");
    assert_eq!(openai["health"]["recent_failures"], 0, "{openai}");

    let (code, metrics) = server.scrape(BOB).await;
    assert_eq!(code, 200);
    let calls = |labels: &[&str]| series(&metrics, "imagegen_tool_calls_total", labels);
    assert_eq!(
        calls(&[
            "caller=\"alice\"",
            "outcome=\"rate_limited\"",
            "tool=\"generate_image\""
        ]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        calls(&["caller=\"bob\"", "outcome=\"ok\"", "provider=\"openai\""]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "imagegen_upstream_duration_seconds_count",
            &["provider=\"mock\""]
        ),
        None,
        "the fallback was asked: {metrics}"
    );

    // A reload that raises alice's limit applies to her next calls, her state kept.
    let raised = limited.replace("requests_per_minute = 1\n", "requests_per_minute = 600\n");
    std::fs::write(
        server.config_file(),
        raised + "\n[reload]\npoll_s = 0\ndebounce_ms = 50\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let again = call(&alice, "generate_image", prompt.clone()).await;
        if again.is_error != Some(true) {
            break;
        }
        assert_eq!(error_kind(&again).as_deref(), Some("rate_limited"));
        assert!(
            Instant::now() < deadline,
            "the raised limit never applied:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.count(), 3);
    let output = server.stop().await;
    assert!(
        output.contains("refused a call over the caller's own limit"),
        "{output}"
    );
    assert_no_secret("the server's stderr", &output);
    for result in [&first, &refused, &batch, &other] {
        assert_no_secret("a tool result", &serde_json::to_string(result).unwrap());
    }
}

#[tokio::test]
async fn the_single_local_user_of_stdio_has_per_caller_limits_too() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(
        home.path(),
        &[(
            "IMAGEGEN_SERVER__LIMITS__PER_CALLER__REQUESTS_PER_MINUTE",
            "1",
        )],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let prompt = json!({"prompt": "x", "size": "256x256"});
    let params = || {
        rmcp::model::CallToolRequestParams::new("generate_image")
            .with_arguments(crate::common::args(prompt.clone()))
    };
    let first = server.client.call_tool(params()).await.unwrap();
    assert_ne!(first.is_error, Some(true), "{first:?}");
    let second = server.client.call_tool(params()).await.unwrap();
    assert_eq!(
        error_kind(&second).as_deref(),
        Some("rate_limited"),
        "{second:?}"
    );
    let message = second.structured_content.as_ref().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("caller `anonymous`")
            && message.contains("server.limits.per_caller.requests_per_minute"),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_move_with_calls_and_take_only_their_own_token_when_one_is_set() {
    let secrets = tempfile::tempdir().unwrap();
    let scraper = token_file(secrets.path(), "metrics", SCRAPER);
    // Key one is refused (disabled), key two is rate limited (rests a second), then it serves.
    let fake = FakeUpstream::start(vec![
        Reply::error(
            401,
            &error_body("bad key", "invalid_request_error", "invalid_api_key"),
        ),
        Reply::error(
            429,
            &error_body("slow down", "requests", "rate_limit_exceeded"),
        )
        .header("retry-after", "1"),
        Reply::json(&ok_body(1, 8)),
    ])
    .await;
    let config = openai(
        &fake,
        &[
            "sk-SENTINEL-key-one-aaaa1111",
            "sk-SENTINEL-key-two-bbbb2222",
        ],
        &format!(
            "{}[server.metrics]\ntoken_file = {:?}\n",
            tokens(secrets.path(), ""),
            scraper.to_str().unwrap()
        ),
    );
    let server = HttpServer::start(&config, &[], &[]).await;
    let alice = connect(&server.mcp(), ALICE, &[]).await;
    let done = call(&alice, "generate_image", json!({"prompt": "a harbour"})).await;
    assert_ne!(done.is_error, Some(true), "{done:?}");
    assert_eq!(fake.count(), 3);

    // Only the metrics token scrapes: none, a caller's token or a wrong one are refused.
    assert_eq!(server.scrape("").await.0, 401);
    assert_eq!(server.scrape(ALICE).await.0, 401, "an /mcp token scraped");
    assert_eq!(server.scrape("not-the-token").await.0, 401);
    let (code, text) = server.scrape(SCRAPER).await;
    assert_eq!(code, 200, "{text}");
    let value = |metric: &str, labels: &[&str]| series(&text, metric, labels);
    assert_eq!(
        value(
            "imagegen_tool_calls_total",
            &[
                "tool=\"generate_image\"",
                "provider=\"openai\"",
                "outcome=\"ok\"",
                "caller=\"alice\"",
                "model=\"",
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "imagegen_upstream_duration_seconds_count",
            &["provider=\"openai\"", "outcome=\"ok\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "imagegen_upstream_duration_seconds_bucket",
            &["provider=\"openai\"", "le=\"300\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("imagegen_upstream_retries_total", &["provider=\"openai\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("imagegen_key_cooldowns_total", &["provider=\"openai\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "imagegen_key_disables_total",
            &["provider=\"openai\"", "kind=\"auth\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "imagegen_provider_keys",
            &["provider=\"openai\"", "state=\"disabled\""]
        ),
        Some(1.0),
        "{text}"
    );
    let health: f64 = ["healthy", "degraded", "open", "half_open"]
        .iter()
        .filter_map(|s| {
            value(
                "imagegen_provider_health",
                &["provider=\"openai\"", &format!("state=\"{s}\"")],
            )
        })
        .sum();
    assert_eq!(health, 1.0, "one circuit state at a time: {text}");
    assert!(
        value("imagegen_image_bytes_total", &["provider=\"openai\""]).is_some_and(|b| b > 0.0),
        "{text}"
    );
    assert!(
        value(
            "imagegen_tool_result_bytes_total",
            &["tool=\"generate_image\""]
        )
        .is_some_and(|b| b > 0.0),
        "{text}"
    );
    assert_eq!(
        value("imagegen_tool_calls_in_flight", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value("imagegen_upstream_in_flight", &[]),
        Some(0.0),
        "{text}"
    );

    // Rotation: the new metrics token works once the reload read it, and the old one stops.
    std::fs::write(&scraper, format!("{SCRAPER_ROTATED}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.scrape(SCRAPER_ROTATED).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated token never worked:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.scrape(SCRAPER).await.0,
        401,
        "the old metrics token still works"
    );
    let (_, text) = server.scrape(SCRAPER_ROTATED).await;
    assert!(
        series(
            &text,
            "imagegen_config_reloads_total",
            &["outcome=\"published\""]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // A reload that fails is counted too, and the running configuration (and token) stays.
    std::fs::write(server.config_file(), "[server\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = server.scrape(SCRAPER_ROTATED).await;
        assert_eq!(code, 200, "{text}");
        let failed = series(
            &text,
            "imagegen_config_reloads_total",
            &["outcome=\"failed\""],
        );
        if failed.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed reload counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = server.stop().await;
    assert_no_secret("the server's stderr", &output);
    assert_no_secret("the metrics", &text);
}

#[tokio::test]
async fn json_logs_carry_the_caller_and_request_id_and_no_secret() {
    let secrets = tempfile::tempdir().unwrap();
    // The flag wins over the file.
    let config = format!(
        "default_provider = \"mock\"\nlog_format = \"text\"\n{}[providers.mock]\nlatency_ms = 50\n",
        tokens(secrets.path(), "")
    );
    let server = HttpServer::start(&config, &[], &["--log-format", "json"]).await;
    let alice = connect(&server.mcp(), ALICE, &[("x-request-id", "req-ops-0042")]).await;
    let done = call(
        &alice,
        "generate_image",
        json!({"prompt": "x", "size": "256x256"}),
    )
    .await;
    assert_ne!(done.is_error, Some(true), "{done:?}");

    // The id is echoed; a hostile one is replaced by one made here.
    let post = |id: &'static str| {
        reqwest::Client::new()
            .post(server.mcp())
            .bearer_auth(BOB)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("x-request-id", id)
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#)
            .send()
    };
    let echoed = post("req-ops-0043").await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-ops-0043");
    let replaced = post("two words").await.unwrap();
    let made = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        made.len() == 32 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );

    let line = server.wait_for_line("calling the provider").await;
    let event: Value = serde_json::from_str(&line).expect("a JSON line");
    let spans = event["spans"].as_array().expect("the span list");
    let field = |name: &str| {
        spans
            .iter()
            .find_map(|s| s[name].as_str().map(String::from))
    };
    assert_eq!(field("caller").as_deref(), Some("alice"), "{line}");
    assert_eq!(
        field("request_id").as_deref(),
        Some("req-ops-0042"),
        "{line}"
    );
    assert_eq!(event["fields"]["message"], "calling the provider", "{line}");

    // A format change by reload needs a restart, and says so.
    let text = std::fs::read_to_string(server.config_file()).unwrap();
    std::fs::write(
        server.config_file(),
        text.replace("log_format = \"text\"", "log_format = \"json\""),
    )
    .unwrap();
    server
        .wait_for_line("log_format changed but is not applied")
        .await;

    let lines = server.lines();
    for line in &lines {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    let output = server.stop().await;
    assert_no_secret("the server's stderr", &output);
}

#[tokio::test]
async fn the_config_files_log_format_applies_from_the_first_line() {
    let server = HttpServer::start("log_format = \"json\"\n", &[], &[]).await;
    let lines = server.lines();
    assert!(!lines.is_empty());
    for line in &lines {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
    }
    server.stop().await;
}

#[test]
fn caller_limits_and_the_metrics_token_are_checked_when_loading() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = token_file(dir.path(), "metrics", SCRAPER);
    let load = |text: &str| crate::common::load_config_in(dir.path(), text);
    let loaded = load(&format!(
        "[server.metrics]\ntoken_file = \"metrics\"\n\
         [server.limits.per_caller]\nmax_in_flight = 2\n\
         [[server.auth.tokens]]\nname = \"alice\"\ntoken = \"{ALICE}\"\nrequests_per_minute = 5\n"
    ))
    .unwrap();
    assert!(loaded.has_metrics_token());
    assert_eq!(
        loaded.config.server.metrics.token_file.as_deref(),
        Some(metrics.as_path())
    );
    assert!(
        loaded.inputs().iter().any(|i| i.path == metrics),
        "the token file is watched"
    );
    for text in [format!("{loaded:?}"), loaded.show()] {
        assert_no_secret("the loaded configuration", &text);
    }
    for (config, says) in [
        (
            "[server.limits.per_caller]\nrequests_per_minute = 0\n".to_string(),
            "server.limits.per_caller.requests_per_minute",
        ),
        (
            "[[server.auth.tokens]]\nname = \"a\"\ntoken = \"x\"\nmax_in_flight = 0\n".to_string(),
            "max_in_flight",
        ),
        (
            "[server.limits.per_caller]\nburst = 3\n".to_string(),
            "burst",
        ),
        (
            format!(
                "[server.metrics]\ntoken_file = \"metrics\"\n\
                 [[server.auth.tokens]]\nname = \"alice\"\ntoken = \"{SCRAPER}\"\n"
            ),
            "the same token as [[server.auth.tokens]] `alice`",
        ),
        (
            "[server.metrics]\ntoken_file = \"missing\"\n".to_string(),
            "server.metrics.token_file",
        ),
        ("log_format = \"xml\"\n".to_string(), "log_format"),
    ] {
        let error = load(&config).unwrap_err().to_string();
        assert!(error.contains(says), "{config}: {error}");
        assert_no_secret("a configuration error", &error);
    }
}

#[tokio::test]
async fn calls_over_a_callers_max_in_flight_are_refused_until_one_ends() {
    let secrets = tempfile::tempdir().unwrap();
    let config = format!(
        "default_provider = \"mock\"\n{}[providers.mock]\nlatency_ms = 1000\n",
        tokens(secrets.path(), "max_in_flight = 1")
    );
    let server = HttpServer::start(&config, &[], &[]).await;
    let alice = connect(&server.mcp(), ALICE, &[]).await;
    let bob = connect(&server.mcp(), BOB, &[]).await;
    let prompt = json!({"prompt": "x", "size": "256x256"});
    let peer = alice.peer().clone();
    let slow = {
        let prompt = prompt.clone();
        tokio::spawn(async move {
            peer.call_tool(
                rmcp::model::CallToolRequestParams::new("generate_image")
                    .with_arguments(crate::common::args(prompt)),
            )
            .await
            .unwrap()
        })
    };
    server.wait_for_line("calling the provider").await;
    let refused = call(
        &alice,
        "edit_image",
        json!({"prompt": "x", "images": ["a.png"]}),
    )
    .await;
    assert_eq!(
        error_kind(&refused).as_deref(),
        Some("rate_limited"),
        "{refused:?}"
    );
    let message = refused.structured_content.as_ref().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("1 image calls running at once")
            && message.contains("max_in_flight of [[server.auth.tokens]] `alice`"),
        "{message}"
    );
    // Bob's calls are not alice's.
    let other = call(&bob, "generate_image", prompt.clone()).await;
    assert_ne!(other.is_error, Some(true), "{other:?}");
    let first = slow.await.unwrap();
    assert_ne!(first.is_error, Some(true), "{first:?}");
    let after = call(&alice, "generate_image", prompt).await;
    assert_ne!(
        after.is_error,
        Some(true),
        "the slot was not freed: {after:?}"
    );
    server.stop().await;
}
