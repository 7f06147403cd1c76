//! Key state and per-caller limits shared between replicas through a real `redis-server`,
//! with real server processes over HTTP and a wiremock OpenAI upstream that answers each key
//! as told and records which key each request carried:
//!
//! - a 429 seen by replica A cools the key for replica B (its next call skips it) and for a
//!   replica started later; a key rejected there is disabled everywhere; Redis holds neither
//!   the key nor its hash; a key added to a replica by a reload takes the cooldown others hold;
//! - a caller's `requests_per_minute` is one count over the calls it spreads across replicas;
//! - with Redis killed, each replica keeps its own key state and counts, says so in its
//!   status, and calls go on; with Redis back, the state is shared again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::http_server::{call, connect, HttpServer};
use imagegen_testkit::{openai::ok_body, RedisServer};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

const K1: &str = "sk-SENTINEL-cluster-K1-5a0c3e7b9d1f1111";
const K2: &str = "sk-SENTINEL-cluster-K2-8e2d4f6a0b3c2222";

/// How the server shows a key.
fn fp(key: &str) -> String {
    format!("sk-…{}", &key[key.len() - 4..])
}

/// How the upstream answers a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// 200 with an image.
    Ok,
    /// 429 `rate_limit_exceeded` with `retry-after: 30`.
    RateLimited,
    /// 401 `invalid_api_key`.
    Rejected,
}

/// An upstream answering each key as told (images by default), recording the keys.
#[derive(Clone, Default)]
struct Upstream {
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start() -> (MockServer, Self) {
        let upstream = Self::default();
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .respond_with(upstream.clone())
            .mount(&server)
            .await;
        (server, upstream)
    }

    /// From now on, `key` gets `reply`.
    fn set(&self, key: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(key.into(), reply);
    }

    /// The keys of the requests so far, as fingerprints, in order.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|k| fp(k)).collect()
    }
}

impl Respond for Upstream {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        self.seen.lock().unwrap().push(key.clone());
        let reply = self.replies.lock().unwrap().get(&key).copied();
        match reply.unwrap_or(Reply::Ok) {
            Reply::Ok => ResponseTemplate::new(200).set_body_json(ok_body(1, 16)),
            Reply::RateLimited => ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": {
                    "message": "Rate limit reached for images per minute (IPM): Limit 5, Used 5, Requested 1.",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
            Reply::Rejected => ResponseTemplate::new(401).set_body_json(json!({"error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        }
    }
}

/// A replica's config: `openai` on `upstream` with both keys, on `redis` under `prefix`, and
/// `extra` after it.
fn config(upstream: &MockServer, redis: &RedisServer, prefix: &str, extra: &str) -> String {
    format!(
        "default_provider = \"openai\"\n\
         [providers.openai]\napi_keys = [\"{K1}\", \"{K2}\"]\nbase_url = \"{}/v1\"\nmax_retries = 0\n\
         [cluster]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n{extra}",
        upstream.uri(),
        redis.url()
    )
}

async fn generate(server: &HttpServer, prompt: &str) -> Value {
    let client = connect(&server.mcp(), "", &[]).await;
    let result = call(&client, "generate_image", json!({"prompt": prompt})).await;
    let _ = client.cancel().await;
    let mut out = result.structured_content.unwrap_or_default();
    out["is_error"] = json!(result.is_error == Some(true));
    out
}

/// `list_providers`: the providers with their keys, and the cluster's state.
async fn providers(server: &HttpServer) -> Value {
    let client = connect(&server.mcp(), "", &[]).await;
    let result = call(&client, "list_providers", json!({})).await;
    let _ = client.cancel().await;
    result.structured_content.unwrap()
}

/// What `list_providers` says of `key` at the `openai` provider.
fn key_info(view: &Value, key: &str) -> Value {
    view["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .and_then(|p| p["keys"].as_array())
        .and_then(|keys| keys.iter().find(|k| k["fingerprint"] == fp(key)))
        .cloned()
        .unwrap_or_default()
}

/// The state of `key` at the `openai` provider.
fn key_state(view: &Value, key: &str) -> String {
    key_info(view, key)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls `list_providers` until `done` holds, for at most 10 s.
async fn wait_for(server: &HttpServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = providers(server).await;
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: {view:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key and value Redis holds, as text.
fn redis_dump(redis: &RedisServer) -> String {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
    let mut out = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
        let value: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut connection).unwrap()],
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut connection)
                .unwrap(),
            _ => Vec::new(),
        };
        out.push_str(&format!("{key} ({kind}) {}\n", value.join(" ")));
    }
    out
}

#[tokio::test]
async fn a_429_on_one_replica_cools_the_key_for_the_others() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (mock, upstream) = Upstream::start().await;
    let text = config(&mock, &redis, "keys", "");
    let a = HttpServer::start(&text, &[], &[]).await;
    let b = HttpServer::start(&text, &[], &[]).await;
    for server in [&a, &b] {
        wait_for(server, "following the cluster", |v| {
            v["cluster"]["key_state"] == "shared"
        })
        .await;
    }

    upstream.set(K1, Reply::RateLimited);
    let result = generate(&a, "one").await;
    assert_eq!(result["is_error"], false, "{result:#}");
    assert_eq!(upstream.seen(), [fp(K1), fp(K2)], "A: K1 limited, then K2");

    // B has sent nothing with K1, yet sees it cooling, and its first call goes to K2.
    let view = wait_for(&b, "B sees K1 cooling", |v| {
        key_state(v, K1) == "cooling_down"
    })
    .await;
    assert_eq!(key_state(&view, K2), "active", "{view:#}");
    let result = generate(&b, "two").await;
    assert_eq!(result["is_error"], false, "{result:#}");
    assert_eq!(upstream.seen(), [fp(K1), fp(K2), fp(K2)], "B skipped K1");

    // A replica started now reads the cooldown from Redis.
    let c = HttpServer::start(&text, &[], &[]).await;
    let view = wait_for(&c, "C sees K1 cooling", |v| {
        key_state(v, K1) == "cooling_down"
    })
    .await;
    let wait = key_info(&view, K1)["usable_in_s"].as_u64().unwrap();
    assert!((1..=30).contains(&wait), "{view:#}");

    // A key rejected on C is disabled on A and B too, saying where it was seen.
    upstream.set(K2, Reply::Rejected);
    let result = generate(&c, "three").await;
    assert_eq!(result["is_error"], true, "{result:#}");
    assert_eq!(upstream.seen().len(), 4, "C tried K2 alone");
    for server in [&a, &b] {
        let view = wait_for(server, "K2 disabled", |v| key_state(v, K2) == "disabled").await;
        let reason = key_info(&view, K2)["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("another replica"), "{view:#}");
    }

    // Redis holds fingerprints and hashes under the prefix: no key, not even its SHA-256.
    let dump = redis_dump(&redis);
    assert!(
        dump.contains("{keys}:k:") && dump.contains(&fp(K1)),
        "{dump}"
    );
    for key in [K1, K2] {
        let hash: String = {
            use sha2::Digest;
            sha2::Sha256::digest(key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert!(
            !dump.contains("SENTINEL") && !dump.contains(&hash[..32]),
            "{dump}"
        );
    }
    for server in [a, b, c] {
        let output = server.stop().await;
        assert!(!output.contains("SENTINEL"), "{output}");
    }
}

#[tokio::test]
async fn a_callers_requests_per_minute_is_one_count_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (mock, _upstream) = Upstream::start().await;
    let text = config(
        &mock,
        &redis,
        "rate",
        "[server.limits.per_caller]\nrequests_per_minute = 3\n",
    );
    let a = HttpServer::start(&text, &[], &[]).await;
    let b = HttpServer::start(&text, &[], &[]).await;
    let mut served = 0;
    let mut refused = Vec::new();
    for i in 0..6 {
        let server = if i % 2 == 0 { &a } else { &b };
        let result = generate(server, &format!("call {i}")).await;
        if result["is_error"] == true {
            refused.push(result["error"].clone());
        } else {
            served += 1;
        }
    }
    // Each replica alone would have served all six (three each).
    assert_eq!(served, 3, "{refused:#?}");
    assert_eq!(refused.len(), 3);
    for error in &refused {
        assert_eq!(error["kind"], "rate_limited", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("3 image calls per minute")
                && message.contains("server.limits.per_caller.requests_per_minute"),
            "{message}"
        );
        let retry = error["retry_after_s"].as_u64().unwrap();
        assert!((1..=60).contains(&retry), "{error}");
    }
    let view = providers(&a).await;
    assert_eq!(view["cluster"]["caller_limits"], "shared", "{view:#}");
    for server in [a, b] {
        server.stop().await;
    }
}

#[tokio::test]
async fn with_redis_gone_key_state_and_limits_are_each_replicas_own_and_calls_go_on() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (mock, upstream) = Upstream::start().await;
    let text = config(
        &mock,
        &redis,
        "down",
        "[server.limits.per_caller]\nrequests_per_minute = 2\n",
    );
    let a = HttpServer::start(&text, &[], &[]).await;
    let b = HttpServer::start(&text, &[], &[]).await;
    for server in [&a, &b] {
        wait_for(server, "following the cluster", |v| {
            v["cluster"]["key_state"] == "shared"
        })
        .await;
    }

    redis.kill();
    for server in [&a, &b] {
        wait_for(server, "key state local", |v| {
            v["cluster"]["key_state"] == "local"
        })
        .await;
    }
    // A 429 on A cools K1 on A alone; A's calls go on with K2, on A's own count.
    upstream.set(K1, Reply::RateLimited);
    for i in 0..2 {
        let result = generate(&a, &format!("a{i}")).await;
        assert_eq!(result["is_error"], false, "{result:#}");
    }
    let refused = generate(&a, "a2").await;
    assert_eq!(refused["error"]["kind"], "rate_limited", "{refused:#}");
    let view = providers(&a).await;
    assert_eq!(key_state(&view, K1), "cooling_down", "{view:#}");
    let cluster = &view["cluster"];
    assert_eq!(
        (
            cluster["state"].as_str(),
            cluster["key_state"].as_str(),
            cluster["caller_limits"].as_str()
        ),
        (Some("down"), Some("local"), Some("local")),
        "{view:#}"
    );
    // B knows nothing of A's cooldown nor of A's calls: it serves two of its own.
    assert_eq!(key_state(&providers(&b).await, K1), "active");
    upstream.set(K1, Reply::Ok);
    for i in 0..2 {
        let result = generate(&b, &format!("b{i}")).await;
        assert_eq!(result["is_error"], false, "{result:#}");
    }
    assert_eq!(upstream.seen()[..2], [fp(K1), fp(K2)]);

    // Redis back: both share their key state again.
    redis.restart();
    for server in [&a, &b] {
        wait_for(server, "shared again", |v| {
            v["cluster"]["key_state"] == "shared"
        })
        .await;
    }
    let output = a.stop().await;
    assert!(
        output.contains("key cooldowns and disables are this replica's own"),
        "{output}"
    );
    b.stop().await;
}

/// Rewrites `server`'s config to `text` and waits for the reload.
async fn reconfigure(server: &HttpServer, text: &str) {
    let reloads = || {
        server
            .lines()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    };
    let before = reloads();
    std::fs::write(
        server.config_file(),
        format!("{text}\n[reload]\npoll_s = 0\ndebounce_ms = 50\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads() == before {
        assert!(Instant::now() < deadline, "no reload: {}", server.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_key_added_by_a_reload_takes_the_cooldown_other_replicas_hold_on_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (mock, upstream) = Upstream::start().await;
    let both = config(&mock, &redis, "reload", "");
    let a = HttpServer::start(&both, &[], &[]).await;
    let b = HttpServer::start(&both.replace(&format!("\"{K1}\", "), ""), &[], &[]).await;
    for server in [&a, &b] {
        wait_for(server, "following the cluster", |v| {
            v["cluster"]["key_state"] == "shared"
        })
        .await;
    }
    upstream.set(K1, Reply::RateLimited);
    let result = generate(&a, "one").await;
    assert_eq!(result["is_error"], false, "{result:#}");
    // B had no K1 when A's cooldown was published; its reload adds it, already cooling.
    reconfigure(&b, &both).await;
    let view = wait_for(&b, "K1 cooling on B", |v| {
        key_state(v, K1) == "cooling_down"
    })
    .await;
    assert_eq!(key_state(&view, K2), "active", "{view:#}");
    for server in [a, b] {
        server.stop().await;
    }
}
