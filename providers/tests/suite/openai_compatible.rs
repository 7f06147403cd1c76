//! The OpenAI-compatible provider against a fake compatible server (LiteLLM, LocalAI style):
//! the shared conformance suite and error and hostile rows, then its own ways: `url` or
//! `b64_json` answers, missing fields, only the parameters the model declares, extra headers
//! that are sent but never shown, and no key at all.

use std::{io::Cursor, sync::Arc, time::Duration};

use crate::common::Form;
use base64::Engine as _;
use imagegen_providers::{
    build::{BuildContext, KindConfig, ProviderConfig},
    http::ClientCache,
    keys::KeyPool,
    layers::Checked,
    openai_compatible,
    testing::{
        assert_no_sentinel, conformance, error_rows, hostile_rows, ConformanceStub, Fault,
        StubTarget,
    },
    validate::parse_size,
    ErrorKind, GenerateRequest, ImageProvider, ImageProviderExt, ModelOverride,
};
use imagegen_testkit::{img, openai as testkit_openai, Chunk, Reply};
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path, path_regex},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

const KEY: &str = "sk-SENTINEL-compat-0123456789abcdef";
const TITLE: &str = "SENTINEL-title-secret-value";

/// A compatible provider built from its configuration as the server builds it (its
/// `[providers.NAME.models]` applied to the catalog), behind the catalog checks.
fn build(base_url: &str, key: Option<&str>, tweak: impl FnOnce(&mut ProviderConfig)) -> Checked {
    let mut config = ProviderConfig::of(KindConfig::OpenaiCompatible(openai_compatible::Config {
        base_url: base_url.into(),
        ..openai_compatible::Config::default()
    }));
    config.http.max_retries = 0;
    config.http.timeout_s = 5;
    tweak(&mut config);
    config.check().expect("valid settings");
    let keys = key.map(|k| (SecretString::from(k.to_string()), "test".to_string()));
    let mut catalog = config.kind.catalog();
    catalog.extend(config.common.models.iter()).unwrap();
    let catalog = Arc::new(catalog);
    let provider = config
        .build(BuildContext {
            keys: Arc::new(KeyPool::new(keys, Duration::from_secs(600))),
            catalog: catalog.clone(),
            clients: &ClientCache::default(),
        })
        .expect("builds");
    Checked::new(provider, catalog)
}

fn compatible(config: &mut ProviderConfig) -> &mut openai_compatible::Config {
    match &mut config.kind {
        KindConfig::OpenaiCompatible(c) => c,
        _ => unreachable!("a compatible configuration"),
    }
}

fn format_of(name: &str) -> image::ImageFormat {
    match name {
        "jpeg" => image::ImageFormat::Jpeg,
        "webp" => image::ImageFormat::WebP,
        _ => image::ImageFormat::Png,
    }
}

fn encoded(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let pixels = image::RgbImage::from_pixel(width, height, image::Rgb([90, 160, 30]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fake compatible server, as sparse as LocalAI's answers: generations answer with result
/// URLs on the same server (`/files/WxH.FORMAT`), edits with `b64_json`, and neither carries
/// `created`, `usage` or `revised_prompt`; streams when asked to.
struct FakeServer {
    origin: String,
}

impl Respond for FakeServer {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (body, edit) = match Form::parse(request) {
            Some(form) => {
                let fields: serde_json::Map<String, Value> = form
                    .texts()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
                    .collect();
                (Value::Object(fields), true)
            }
            None => (request.body_json().unwrap_or(Value::Null), false),
        };
        let n = body["n"].as_u64().unwrap_or(1);
        let size = body["size"].as_str().unwrap_or("1024x1024").to_string();
        let (width, height) = parse_size(&size).unwrap_or((1024, 1024));
        let format_name = body["output_format"].as_str().unwrap_or("png").to_string();
        let format = format_of(&format_name);
        if body["stream"] == json!(true) {
            let events = if edit {
                "image_edit"
            } else {
                "image_generation"
            };
            let partials = body["partial_images"].as_u64().unwrap_or(0);
            let mut text: String = (0..partials)
                .map(|i| {
                    let data = json!({"type": format!("{events}.partial_image"),
                        "b64_json": b64(&encoded(width / 4, height / 4, format)),
                        "partial_image_index": i});
                    format!("data: {data}\n\n")
                })
                .collect();
            let data = json!({"type": format!("{events}.completed"),
                              "b64_json": b64(&encoded(width, height, format))});
            text += &format!("data: {data}\n\n");
            return ResponseTemplate::new(200).set_body_raw(text, "text/event-stream");
        }
        let data: Vec<Value> = (0..n)
            .map(|_| match edit {
                true => json!({"b64_json": b64(&encoded(width, height, format))}),
                false => json!({"url": format!("{}/files/{size}.{format_name}", self.origin)}),
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({ "data": data }))
    }
}

/// Serves the image a result URL names.
struct Files;

impl Respond for Files {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let name = request.url.path().trim_start_matches("/files/");
        let (size, format) = name.split_once('.').unwrap_or((name, "png"));
        let (width, height) = parse_size(size).unwrap_or((8, 8));
        ResponseTemplate::new(200)
            .set_body_raw(encoded(width, height, format_of(format)), "image/png")
    }
}

async fn fake_server() -> MockServer {
    let server = MockServer::start().await;
    let origin = server.uri();
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/images/(generations|edits)$"))
        .respond_with(FakeServer { origin })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/files/"))
        .respond_with(Files)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn compatible_provider_conforms_against_a_fake_server() {
    let server = fake_server().await;
    let provider = build(&format!("{}/v1", server.uri()), Some(KEY), |_| {});
    assert_eq!(provider.kind(), "openai_compatible");
    let calls = conformance(&provider).await;
    let received = server.received_requests().await.unwrap();
    let posts: Vec<&Request> = received
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    assert_eq!(posts.len(), calls, "one request per call, no retries");
    assert!(
        received.iter().any(|r| r.url.path().starts_with("/files/")),
        "result URLs were downloaded from the server's origin"
    );
    for request in posts {
        let auth = request.headers.get("authorization").unwrap();
        assert_eq!(auth.to_str().unwrap(), format!("Bearer {KEY}"));
    }
}

// ---- error and hostile rows ---------------------------------------------------------------

/// A compatible server's wire format (OpenAI's error shape), as the rows script it.
struct CompatibleStub;

impl ConformanceStub for CompatibleStub {
    fn model(&self) -> &str {
        openai_compatible::DEFAULT_MODEL
    }

    fn answer_ok(&self, n: usize) -> Reply {
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": img::b64(&img::png(8, 8))}))
            .collect();
        Reply::json(&json!({ "data": data }))
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let error = match fault {
            Fault::Field { field, value } => {
                let mut error = json!({"message": "bad", "type": "invalid_request_error",
                                       "param": null, "code": null});
                error[field] = value.into();
                error
            }
            Fault::Refusal => json!({
                "message": "Your request was rejected as a result of our safety system.",
                "type": "invalid_request_error",
                "code": "content_policy_violation"
            }),
        };
        Reply::error(status, &json!({ "error": error }))
    }

    fn answer_urls(&self, urls: &[String]) -> Option<Reply> {
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        Some(Reply::json(&testkit_openai::url_body(&urls)))
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        let partial = testkit_openai::partial_event(0, &img::png(8, 8));
        Some(Reply::sse(vec![
            Chunk::text(partial),
            Chunk::Pause(Duration::from_millis(50)),
            Chunk::Drop,
        ]))
    }
}

fn compatible_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let provider = build(target.base_url.as_str(), Some(target.key), |c| {
        c.http.retry_after_cap_s = target.retry_after_cap.as_secs();
        c.http.timeout_s = target.timeout.as_secs().max(1);
    });
    Box::new(provider)
}

#[tokio::test]
async fn compatible_provider_maps_every_error_row() {
    error_rows(&compatible_against, &CompatibleStub).await;
}

#[tokio::test]
async fn compatible_provider_withstands_a_hostile_upstream() {
    hostile_rows(&compatible_against, &CompatibleStub).await;
}

// ---- its own ways -------------------------------------------------------------------------

/// A server answering every generation with one 8×8 PNG, as `b64_json` alone.
async fn one_image_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": [{"b64_json": img::b64(&img::png(8, 8))}]})),
        )
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn an_unknown_model_is_sent_only_prompt_n_and_size_until_more_is_declared() {
    let server = one_image_server().await;
    let base = format!("{}/v1", server.uri());
    let provider = build(&base, None, |c| c.common.model = Some("flux-local".into()));
    let mut request = GenerateRequest::new("a fox", "flux-local");
    request.options.size = Some("512x512".into());
    request.options.n = Some(1);
    let result = provider.generate(&request).await.unwrap();
    // A parameter the model does not declare is refused before anything is sent.
    let mut with_quality = request.clone();
    with_quality.options.quality = Some("high".into());
    let err = provider.generate(&with_quality).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest, "{err}");

    // Declared under [providers.NAME.models."flux-local"], it goes.
    let declared: ModelOverride = serde_json::from_value(json!({
        "params": ["size", "n", "quality"], "qualities": ["standard", "high"]
    }))
    .unwrap();
    let provider = build(&base, None, |c| {
        c.common.models.insert("flux-local".into(), declared);
    });
    provider.generate(&with_quality).await.unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 2, "the refused call sent nothing");
    let keys = |r: &Request| {
        let body: Value = r.body_json().unwrap();
        let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&received[0]), ["model", "n", "prompt", "size"]);
    assert_eq!(
        keys(&received[1]),
        ["model", "n", "prompt", "quality", "size"]
    );
    assert_eq!(received[1].body_json::<Value>().unwrap()["quality"], "high");
    // What went upstream is what the result says went.
    let sent: Vec<&String> = result.sent.keys().collect();
    assert!(!sent.contains(&&"quality".to_string()), "{sent:?}");
    assert_eq!(result.sent["size"], "512x512");
    // No key configured: no Authorization header (LocalAI takes none).
    assert!(received
        .iter()
        .all(|r| r.headers.get("authorization").is_none()));
}

#[tokio::test]
async fn url_and_b64_answers_both_work_without_created_usage_or_revised_prompt() {
    let server = MockServer::start().await;
    let origin = server.uri();
    Mock::given(method("GET"))
        .and(path("/out/1.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(img::png(16, 16), "image/png"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [
            {"url": format!("{origin}/out/1.png")},
            {"b64_json": img::b64(&img::png(16, 16)), "revised_prompt": null}
        ]})))
        .mount(&server)
        .await;
    let provider = build(&format!("{origin}/v1"), Some(KEY), |_| {});
    let mut request = GenerateRequest::new("two", "gpt-image-2");
    request.options.n = Some(2);
    let result = provider.generate(&request).await.unwrap();
    assert_eq!(result.images.len(), 2);
    assert!(result
        .images
        .iter()
        .all(|i| (i.width, i.height) == (16, 16)));
    assert_eq!(result.revised_prompt, None);
    assert!(result.usage.is_none());
    let gets = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .count();
    assert_eq!(gets, 1, "the URL was downloaded once");
}

#[tokio::test]
async fn extra_headers_are_sent_and_never_shown() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": format!("bad header X-Title: {TITLE}"), "code": TITLE
        }})))
        .mount(&server)
        .await;
    let mut shown = String::new();
    let provider = build(&format!("{}/v1", server.uri()), Some(KEY), |c| {
        compatible(c)
            .headers
            .insert("X-Title".into(), SecretString::from(TITLE));
        compatible(c).headers.insert(
            "HTTP-Referer".into(),
            SecretString::from("https://example.test"),
        );
        shown = format!("{:?} {}", c.kind, serde_json::to_string(&c.kind).unwrap());
    });
    assert!(shown.contains("X-Title"), "{shown}");
    assert_no_sentinel(&shown, "the configuration's Debug and serialization");
    assert_no_sentinel(&format!("{provider:?}"), "the provider's Debug");
    let err = provider
        .generate(&GenerateRequest::new("x", "gpt-image-2"))
        .await
        .unwrap_err();
    assert_no_sentinel(&format!("{err} {err:?}"), "an error echoing the header");
    let received = server.received_requests().await.unwrap();
    assert_eq!(received[0].headers.get("x-title").unwrap(), TITLE);
    assert_eq!(
        received[0].headers.get("http-referer").unwrap(),
        "https://example.test"
    );
}

#[tokio::test]
async fn a_200_holding_an_error_and_no_images_is_read_as_that_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "error": {"message": "backend crashed", "code": "server_error"}
        })))
        .mount(&server)
        .await;
    let provider = build(&format!("{}/v1", server.uri()), None, |_| {});
    let err = provider
        .generate(&GenerateRequest::new("x", "gpt-image-2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(err.message.contains("backend crashed"), "{err}");
}

#[test]
fn lifecycle_dates_are_not_acted_on_unless_asked() {
    let config = |dates: bool| {
        let mut config =
            ProviderConfig::of(KindConfig::OpenaiCompatible(openai_compatible::Config {
                base_url: "http://127.0.0.1:1/v1".into(),
                catalog_dates_apply: dates,
                ..openai_compatible::Config::default()
            }));
        config.common.model = Some("gpt-image-1.5".into());
        config
    };
    let built = |config: ProviderConfig| {
        config
            .build(BuildContext {
                keys: Arc::new(KeyPool::empty()),
                catalog: Arc::new(config.kind.catalog()),
                clients: &ClientCache::default(),
            })
            .unwrap()
    };
    let by_default = built(config(false));
    assert!(!by_default.lifecycle_is_authoritative());
    assert!(by_default.aliases().is_empty());
    assert_eq!(by_default.default_model(), "gpt-image-1.5");
    assert!(built(config(true)).lifecycle_is_authoritative());
}

#[test]
fn settings_are_checked_without_quoting_values() {
    let check = |tweak: &dyn Fn(&mut openai_compatible::Config)| {
        let mut config = openai_compatible::Config {
            base_url: "http://localhost:8080/v1".into(),
            ..openai_compatible::Config::default()
        };
        tweak(&mut config);
        ProviderConfig::of(KindConfig::OpenaiCompatible(config)).check()
    };
    assert_eq!(check(&|_| {}), Ok(()));
    assert_eq!(check(&|c| c.base_url.clear()).unwrap_err().key, "base_url");
    for (name, value) in [
        ("Authorization", "Bearer SENTINEL"),
        ("bad header", "v"),
        ("X-Ok", "SENTINEL\nInjected: 1"),
    ] {
        let err = check(&|c| {
            c.headers
                .insert(name.into(), SecretString::from(value.to_string()));
        })
        .unwrap_err();
        assert_eq!(err.key, "headers", "{name}");
        assert_no_sentinel(&err.message, name);
    }
    // `kind = "openai"` with a custom base URL is still its own kind, unchanged.
    assert!(
        KindConfig::KINDS.contains(&"openai") && KindConfig::KINDS.contains(&"openai_compatible")
    );
}
