//! Routing between providers: fallback lists, routes, circuit breaking, model pinning and
//! option translation, through the engine the server runs.

use imagegen_mcp::{
    config::{CliOverrides, LoadedConfig},
    engine::{CallContext, Engine, GenerateParams, Generation},
    error::ToolError,
};
use serde_json::json;

/// An engine over `toml`, with its files in a directory that lives as long as it does.
struct Setup {
    engine: Engine,
    _dir: tempfile::TempDir,
}

fn setup(toml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imagegen.toml");
    std::fs::write(
        &file,
        format!(
            "{toml}\n[output]\ndir = \"{}\"\n",
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let home = dir.path().to_str().unwrap();
    let env = [("HOME", home), ("XDG_DATA_HOME", home)];
    let loaded = LoadedConfig::load_from(&CliOverrides::default(), env, dir.path()).unwrap();
    Setup {
        engine: Engine::from_config(&loaded).unwrap(),
        _dir: dir,
    }
}

fn params(extra: serde_json::Value) -> GenerateParams {
    let mut value = json!({"prompt": "a lighthouse", "size": "256x256"});
    value
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(value).unwrap()
}

async fn generate(setup: &Setup, extra: serde_json::Value) -> Result<Generation, ToolError> {
    setup
        .engine
        .generate(&params(extra), &CallContext::default())
        .await
}

/// The route steps as `(provider, outcome)` pairs.
fn steps(g: &Generation) -> Vec<(String, String)> {
    g.route
        .iter()
        .map(|s| (s.provider.clone(), s.outcome.clone()))
        .collect()
}

fn pair(provider: &str, outcome: &str) -> (String, String) {
    (provider.into(), outcome.into())
}

const FLAKY: &str = r#"
default_provider = "flaky"
[providers.flaky]
kind = "mock"
fail_rate = 1.0
fail_with = "upstream_unavailable"
"#;

#[tokio::test]
async fn an_outage_falls_over_to_the_next_provider_and_the_result_says_why() {
    let s = setup(&format!("{FLAKY}fallback = [\"mock\"]\n"));
    let g = generate(&s, json!({})).await.unwrap();
    assert_eq!(g.provider, "mock");
    assert_eq!(g.images.len(), 1);
    assert_eq!(steps(&g), [pair("flaky", "failed"), pair("mock", "served")]);
    let why = g.route[0].reason.as_deref().unwrap();
    assert!(why.starts_with("upstream_unavailable"), "{why}");
    assert!(
        g.notes
            .iter()
            .any(|n| n.contains("provider `flaky` failed") && n.contains("moved to the next")),
        "{:?}",
        g.notes
    );
    // A call's own `fallback` replaces the configured one; without any, the outage is the error.
    let alone = setup(FLAKY);
    let err = generate(&alone, json!({})).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "upstream_unavailable");
    let g = generate(&alone, json!({"fallback": ["mock"]}))
        .await
        .unwrap();
    assert_eq!(g.provider, "mock");
    let err = generate(&alone, json!({"fallback": ["nowhere"]}))
        .await
        .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("fallback"));
    assert!(
        err.message.contains("unknown provider `nowhere`"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_policy_refusal_stays_unless_the_provider_or_route_says_otherwise() {
    let refusing = r#"
default_provider = "strict"
[providers.strict]
kind = "mock"
fail_rate = 1.0
fail_with = "content_policy"
fallback = ["mock"]
"#;
    let s = setup(refusing);
    let err = generate(&s, json!({})).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "content_policy");
    assert_eq!(err.provider.as_deref(), Some("strict"));

    let s = setup(&format!("{refusing}fallback_on_policy = true\n"));
    assert_eq!(generate(&s, json!({})).await.unwrap().provider, "mock");

    let routed = format!(
        "{refusing}[routes.lenient]\nproviders = [\"strict\", \"mock\"]\nfallback_on_policy = true\n"
    );
    let s = setup(&routed);
    let g = generate(&s, json!({"provider": "lenient"})).await.unwrap();
    assert_eq!(
        steps(&g),
        [pair("strict", "failed"), pair("mock", "served")]
    );
}

#[tokio::test]
async fn an_invalid_request_never_falls_over() {
    let s = setup(&format!("{FLAKY}fallback = [\"mock\"]\n"));
    let err = generate(&s, json!({"size": "7x7"})).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "invalid_request");
    assert_eq!(err.param.as_deref(), Some("size"));
}

#[tokio::test]
async fn an_open_circuit_is_skipped_without_a_call_until_its_probe() {
    let s = setup(&format!("{FLAKY}fallback = [\"mock\"]\n"));
    for _ in 0..4 {
        let g = generate(&s, json!({})).await.unwrap();
        assert_eq!(steps(&g)[0], pair("flaky", "failed"));
    }
    let g = generate(&s, json!({})).await.unwrap();
    assert_eq!(
        steps(&g),
        [pair("flaky", "skipped"), pair("mock", "served")]
    );
    let why = g.route[0].reason.as_deref().unwrap();
    assert!(why.contains("circuit open"), "{why}");
    let health = s.engine.health("flaky");
    assert_eq!((health.state.as_str(), health.recent_failures), ("open", 4));
    assert_eq!(s.engine.health("mock").state, "healthy");
    // The last provider left is always tried, open circuit or not.
    let err = generate(&s, json!({"fallback": []})).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "upstream_unavailable");
}

#[tokio::test]
async fn a_concrete_model_pins_the_fallbacks_and_an_alias_lets_each_serve_its_own() {
    let toml = format!(
        "{FLAKY}fallback = [\"openai\", \"mock\"]\n\
         [providers.openai]\napi_key = \"sk-test-never-sent\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         [providers.flaky.aliases]\nhouse = \"mock-image-1\"\n\
         [providers.mock.aliases]\nhouse = \"gpt-image-2\"\n"
    );
    let s = setup(&toml);
    // OpenAI does not serve the mock's model: skipped without a call.
    let g = generate(&s, json!({"model": "mock-image-1"}))
        .await
        .unwrap();
    assert_eq!(
        steps(&g),
        [
            pair("flaky", "failed"),
            pair("openai", "skipped"),
            pair("mock", "served")
        ]
    );
    assert!(g.route[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("does not serve `mock-image-1`"));
    assert_eq!(g.model, "mock-image-1");
    // `house` means another model on each provider that has it; OpenAI has no such alias.
    let g = generate(&s, json!({"model": "house", "size": "1024x1024"}))
        .await
        .unwrap();
    assert_eq!(
        steps(&g),
        [
            pair("flaky", "failed"),
            pair("openai", "skipped"),
            pair("mock", "served")
        ]
    );
    assert_eq!(g.requested_model.as_deref(), Some("house"));
}

#[tokio::test]
async fn a_route_is_a_provider_name_for_calls_and_the_default() {
    let toml = format!("{FLAKY}[routes.any]\nproviders = [\"flaky\", \"mock\"]\n")
        .replace("default_provider = \"flaky\"", "default_provider = \"any\"");
    let s = setup(&toml);
    assert_eq!(s.engine.default_provider(), "any");
    let g = generate(&s, json!({})).await.unwrap();
    assert_eq!(steps(&g), [pair("flaky", "failed"), pair("mock", "served")]);
    let g = generate(&s, json!({"provider": "any"})).await.unwrap();
    assert_eq!(g.provider, "mock");
}

#[test]
fn route_names_and_lists_are_checked_when_loading() {
    let load = |toml: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("imagegen.toml"), toml).unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        LoadedConfig::load_from(
            &CliOverrides::default(),
            [("HOME", home.clone()), ("XDG_DATA_HOME", home)],
            dir.path(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let clash = load("[routes.mock]\nproviders = [\"mock\"]\n").unwrap_err();
    assert!(
        clash.contains("routes.mock") && clash.contains("already a provider"),
        "{clash}"
    );
    let unknown = load("[routes.any]\nproviders = [\"mock\", \"gone\"]\n").unwrap_err();
    assert!(unknown.contains("names `gone`"), "{unknown}");
    let empty = load("[routes.any]\nproviders = []\n").unwrap_err();
    assert!(empty.contains("is empty"), "{empty}");
    let itself = load("[providers.mock]\nfallback = [\"mock\"]\n").unwrap_err();
    assert!(itself.contains("names the provider itself"), "{itself}");
    load("default_provider = \"any\"\n[routes.any]\nproviders = [\"mock\"]\n").unwrap();
}

#[tokio::test]
async fn a_size_is_sent_as_a_ratio_to_a_provider_whose_model_takes_ratios() {
    let toml = format!(
        "{FLAKY}fallback = [\"mock\"]\n\
         [providers.flaky.aliases]\nhouse = \"mock-image-1\"\n\
         [providers.mock.aliases]\nhouse = \"ratio-only\"\n\
         [providers.mock.models.\"ratio-only\"]\nlike = \"mock-image-1\"\n\
         params = [\"aspect_ratio\", \"resolution\", \"n\", \"output_format\"]\n"
    );
    let s = setup(&toml);
    let g = generate(&s, json!({"model": "house", "size": "1536x1024"}))
        .await
        .unwrap();
    assert_eq!(steps(&g), [pair("flaky", "failed"), pair("mock", "served")]);
    assert!(
        g.notes
            .iter()
            .any(|n| n.contains("`size` 1536x1024 was sent as aspect_ratio 3:2 at resolution 1k")),
        "{:?}",
        g.notes
    );
    let (w, h) = (g.images[0].0.width, g.images[0].0.height);
    assert!(
        (f64::from(w) / f64::from(h) - 1.5).abs() < 0.01,
        "{w}x{h} is 3:2"
    );
}

#[tokio::test]
async fn an_openai_outage_falls_over_to_gemini_which_gets_the_size_as_its_ratio() {
    use wiremock::{
        matchers::{method, path},
        Mock, MockServer, ResponseTemplate,
    };
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"error": {"message": "The server had an error", "type": "server_error"}}),
        ))
        .mount(&openai)
        .await;
    let gemini = MockServer::start().await;
    let png = imagegen_testkit::img::png(1254, 836);
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-3-pro-image:generateContent"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"parts": [{"inlineData": {
                "mimeType": "image/png", "data": imagegen_testkit::img::b64(&png)}}]},
                "finishReason": "STOP"}]
        })))
        .mount(&gemini)
        .await;
    let s = setup(&format!(
        "default_provider = \"openai\"\n\
         [providers.openai]\napi_key = \"sk-test-0123456789\"\nbase_url = \"{}/v1\"\nmax_retries = 0\n\
         fallback = [\"gemini\"]\n\
         [providers.gemini]\napi_key = \"AIza-test-0123456789\"\nbase_url = \"{}\"\n",
        openai.uri(),
        gemini.uri()
    ));
    let g = generate(&s, json!({"size": "1536x1024"})).await.unwrap();
    assert_eq!(
        steps(&g),
        [pair("openai", "failed"), pair("gemini", "served")]
    );
    assert!(g.route[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("upstream_unavailable"));
    assert_eq!(g.model, "gemini-3-pro-image");
    let sent = serde_json::Value::Object(g.sent.clone());
    assert_eq!(
        sent.pointer("/generationConfig/imageConfig/aspectRatio"),
        Some(&json!("3:2")),
        "{sent}"
    );
    assert_eq!(openai.received_requests().await.unwrap().len(), 1);
    let asked = gemini.received_requests().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&asked[0].body).unwrap();
    assert_eq!(
        body["generationConfig"]["imageConfig"]["aspectRatio"],
        "3:2"
    );
}
