//! Budgets through the real binary over HTTP, against a wiremock OpenAI upstream that counts
//! what it was sent, and (for the cluster) a real `redis-server` shared by two server processes:
//!
//! - a call refused by a budget, or for a model without a known price, sends nothing upstream;
//! - two replicas on one Redis both report it connected; with Redis killed, the replica that
//!   fails closed refuses paid calls (`cluster_unavailable`, nothing sent) and the one with
//!   `fail_open` serves them with a note; both come back when Redis does.

use std::time::Duration;

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

/// An upstream that takes `delay` over each answer (so calls overlap), expecting no count.
async fn slow_upstream(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(1, 16))
                .set_delay(delay),
        )
        .mount(&server)
        .await;
    server
}

/// `calls` generations at once, spread over `servers`: the cost of each one served (USD) and
/// how many were refused with `budget_exceeded` (any other outcome fails the test).
async fn storm(servers: &[&HttpServer], calls: usize) -> (Vec<f64>, usize) {
    let mut clients = Vec::new();
    for server in servers {
        clients.push(connect(&server.mcp(), "", &[]).await);
    }
    let results = futures::future::join_all((0..calls).map(|i| {
        let client = &clients[i % clients.len()];
        call(
            client,
            "generate_image",
            json!({"prompt": format!("lighthouse {i}")}),
        )
    }))
    .await;
    let (mut costs, mut refused) = (Vec::new(), 0);
    for result in results {
        if result.is_error == Some(true) {
            let error = error_of(&result);
            assert_eq!(error["kind"], "budget_exceeded", "{error}");
            refused += 1;
        } else {
            let cost = &result.structured_content.as_ref().unwrap()["cost"];
            costs.push(cost["usd"].as_f64().expect("a priced model's cost"));
        }
    }
    for client in clients {
        let _ = client.cancel().await;
    }
    (costs, refused)
}

/// The estimate of one default call, from a call made before any budget is set.
async fn one_estimate(server: &HttpServer) -> f64 {
    let result = generate(server).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let cost = &result.structured_content.unwrap()["cost"];
    cost["estimate_usd"]
        .as_f64()
        .expect("the default model is priced")
}

/// Rewrites `server`'s config to `text` and waits for the reload.
async fn reconfigure(server: &HttpServer, text: &str) {
    let before = server
        .lines()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count();
    std::fs::write(
        server.config_file(),
        format!("{text}\n[reload]\npoll_s = 0\ndebounce_ms = 50\n"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server
        .lines()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count()
        == before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    reconfigure(
        &server,
        &config(
            &openai,
            "model = \"house-model\"\n[models.\"house-model\"]\nmax_n = 1\n\
             [budget]\nmonthly_usd = 50.0\n",
        ),
    )
    .await;
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

#[tokio::test]
async fn sixty_four_calls_at_once_spend_at_most_a_budget_that_fits_ten() {
    let openai = slow_upstream(Duration::from_millis(300)).await;
    let server = HttpServer::start(&config(&openai, ""), &[], &[]).await;
    let estimate = one_estimate(&server).await;
    // Room for ten estimates, not eleven.
    let budget = estimate * 10.5;
    reconfigure(
        &server,
        &config(&openai, &format!("[budget]\ndaily_usd = {budget}\n")),
    )
    .await;
    let (costs, refused) = storm(&[&server], 64).await;
    let spent: f64 = costs.iter().sum();
    assert!(
        costs.len() >= 10,
        "{} served, {refused} refused",
        costs.len()
    );
    assert!(spent <= budget + estimate, "spent {spent} of {budget}");
    assert_eq!(costs.len() + refused, 64);
    // Every call the upstream saw was one that was served, and the one before the budget.
    let sent = openai.received_requests().await.unwrap().len();
    assert_eq!(sent, costs.len() + 1);
    server.stop().await;
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_one_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let openai = slow_upstream(Duration::from_millis(300)).await;
    let plain = config(&openai, "");
    let a = HttpServer::start(&plain, &[], &[]).await;
    let b = HttpServer::start(&plain, &[], &[]).await;
    let estimate = one_estimate(&a).await;
    let budget = estimate * 10.5;
    let shared = config(
        &openai,
        &format!(
            "[budget]\ndaily_usd = {budget}\n[cluster]\nredis_url = \"{}\"\nkey_prefix = \"share\"\n",
            redis.url()
        ),
    );
    for server in [&a, &b] {
        reconfigure(server, &shared).await;
    }
    let (costs, refused) = storm(&[&a, &b], 64).await;
    let spent: f64 = costs.iter().sum();
    // Each replica alone would have let ten through: together they still spend one budget.
    assert!(
        spent <= budget + estimate,
        "spent {spent} of {budget} ({} served)",
        costs.len()
    );
    assert!(
        costs.len() >= 10 && refused > 0,
        "{} served, {refused} refused",
        costs.len()
    );
    assert_eq!(
        openai.received_requests().await.unwrap().len(),
        costs.len() + 1
    );
    for server in [a, b] {
        server.stop().await;
    }
}
