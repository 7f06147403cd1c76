//! Budgets through the real binary over HTTP, against a wiremock OpenAI upstream that counts
//! what it was sent, and (for the cluster) a real `redis-server` shared by two server processes:
//!
//! - a call refused by a budget, or for a model without a known price, sends nothing upstream;
//! - two replicas on one Redis both report it connected; with Redis killed, the replica that
//!   fails closed refuses paid calls (`cluster_unavailable`, nothing sent) and the one with
//!   `fail_open` serves them with a note; both come back when Redis does.

use crate::common::http_server::{call, connect, HttpServer};
use imagegen_testkit::{openai::ok_body, RedisServer};
use rmcp::model::CallToolResult;
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

/// An OpenAI upstream answering every generation with one image, expecting `calls` of them.
async fn upstream(calls: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(1, 16)))
        .expect(calls)
        .mount(&server)
        .await;
    server
}

/// A config whose default provider is `openai` on `upstream`, with `extra` after it.
fn config(upstream: &MockServer, extra: &str) -> String {
    format!(
        "default_provider = \"openai\"\n\
         [providers.openai]\napi_key = \"sk-test-budget-0123456789\"\nbase_url = \"{}/v1\"\n\
         max_retries = 0\n{extra}",
        upstream.uri()
    )
}

/// The structured error of a failed result.
fn error_of(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    result.structured_content.as_ref().unwrap()["error"].clone()
}

async fn generate(server: &HttpServer) -> CallToolResult {
    let client = connect(&server.mcp(), "", &[]).await;
    let result = call(&client, "generate_image", json!({"prompt": "a lighthouse"})).await;
    let _ = client.cancel().await;
    result
}

#[tokio::test]
async fn a_budget_refusal_sends_nothing_upstream() {
    let openai = upstream(0).await;
    // A budget with nothing left: even a call that reserves nothing is refused.
    let server = HttpServer::start(
        &config(
            &openai,
            "[budget]\ndaily_usd = 0.0\nallow_unpriced = true\n",
        ),
        &[],
        &[],
    )
    .await;
    let error = error_of(&generate(&server).await);
    assert_eq!(error["kind"], "budget_exceeded", "{error}");
    assert_eq!(error["budget"], "budget.daily_usd");
    assert_eq!(error["retryable"], false);
    assert!(
        error["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"),
        "{error}"
    );
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("Nothing was sent"));

    // Without allow_unpriced, a model without a known price is refused under a budget.
    std::fs::write(
        server.config_file(),
        config(
            &openai,
            "[budget]\nmonthly_usd = 50.0\n[reload]\npoll_s = 0\ndebounce_ms = 50\n",
        ),
    )
    .unwrap();
    server.wait_for_line("configuration reloaded").await;
    let error = error_of(&generate(&server).await);
    assert_eq!(
        (error["kind"].as_str(), error["param"].as_str()),
        (Some("invalid_request"), Some("model")),
        "{error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("budget.allow_unpriced"),
        "{error}"
    );
    server.stop().await;
    // `expect(0)`, checked when the upstream drops: no request reached it.
}

#[tokio::test]
async fn replicas_share_one_redis_and_fail_closed_or_open_when_it_dies() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // Two calls before Redis dies (one per replica), one on the fail-open replica while it is
    // down, one after it is back: the refused call never reaches the upstream.
    let openai = upstream(4).await;
    let cluster = |fail_open: bool| {
        format!(
            "[budget]\ndaily_usd = 5.0\nallow_unpriced = true\n\
             [cluster]\nredis_url = \"{}\"\nkey_prefix = \"e2e\"\nfail_open = {fail_open}\n",
            redis.url()
        )
    };
    let closed = HttpServer::start(&config(&openai, &cluster(false)), &[], &[]).await;
    let open = HttpServer::start(&config(&openai, &cluster(true)), &[], &[]).await;
    for server in [&closed, &open] {
        let result = generate(server).await;
        assert_ne!(result.is_error, Some(true), "{result:?}");
        let providers = {
            let client = connect(&server.mcp(), "", &[]).await;
            let r = call(&client, "list_providers", json!({})).await;
            let _ = client.cancel().await;
            r.structured_content.unwrap()
        };
        assert_eq!(providers["cluster"]["state"], "connected", "{providers}");
        assert!(providers["cluster"]["redis_url"]
            .as_str()
            .unwrap()
            .starts_with("redis://127.0.0.1:"));
    }

    redis.kill();
    let error = error_of(&generate(&closed).await);
    assert_eq!(error["kind"], "cluster_unavailable", "{error}");
    assert_eq!(error["retryable"], true);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("cluster.fail_open = false"),
        "{error}"
    );
    let result = generate(&open).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let notes = result.structured_content.unwrap()["notes"].to_string();
    assert!(notes.contains("this replica alone"), "{notes}");
    let status = {
        let client = connect(&closed.mcp(), "", &[]).await;
        let r = call(&client, "list_providers", json!({})).await;
        let _ = client.cancel().await;
        r.structured_content.unwrap()
    };
    assert_eq!(status["cluster"]["state"], "down", "{status}");
    assert_eq!(status["cluster"]["fail_mode"], "closed");
    assert!(status["cluster"]["down_since"].is_string());

    redis.restart();
    let result = generate(&closed).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    for server in [closed, open] {
        let output = server.stop().await;
        assert!(
            output.contains("the cluster's Redis is unreachable"),
            "{output}"
        );
    }
}
