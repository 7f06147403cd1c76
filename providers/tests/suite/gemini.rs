//! The Gemini provider against a wiremock stub speaking `generateContent` as Google does: the
//! shared conformance suite and error and hostile rows, then its own quirks (ratios and sizes,
//! edits as inline parts, safety blocks under HTTP 200, `RetryInfo`, quota against rate,
//! Vertex AI with a token printed by a script and refreshed after a 401).

use std::{io::Cursor, sync::Arc, time::Duration};

use base64::Engine as _;
use imagegen_providers::{
    gemini::{catalog_entries, Endpoint, GeminiProvider, GeminiSettings},
    http::{RetryPolicy, TokenSource, Tokens},
    keys::KeyPool,
    layers::Checked,
    testing::{conformance, error_rows, hostile_rows, ConformanceStub, Fault, StubTarget},
    CallOptions, Catalog, EditRequest, ErrorKind, Events, GenerateRequest, ImageFormat,
    ImageProvider, InputImage, ProviderEvent, Resolution,
};
use imagegen_testkit::{img, Reply};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

const KEY: &str = "AIza-SENTINEL-gemini-0123456789";
const MODEL: &str = "gemini-3-pro-image";
const ROUTE: &str = "/v1beta/models/gemini-3-pro-image:generateContent";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A PNG of `width`x`height`, shaded by `shade`.
fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let pixels = image::RgbImage::from_pixel(width, height, image::Rgb([200, 20, shade]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A `generateContent` answer holding `images` and a line of text, as Google sends it.
fn answer(images: &[Vec<u8>]) -> Value {
    let mut parts = vec![json!({"text": "Here is your image."})];
    parts.extend(
        images
            .iter()
            .map(|i| json!({"inlineData": {"mimeType": "image/png", "data": b64(i)}})),
    );
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
        "modelVersion": MODEL,
        "responseId": "resp-abc123",
    })
}

fn google_error(code: u16, status: &str, message: &str, details: Value) -> Value {
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
}

fn keys(key: &str) -> Arc<KeyPool> {
    Arc::new(KeyPool::new(
        [(SecretString::from(key.to_string()), "test".to_string())],
        Duration::from_secs(600),
    ))
}

fn settings(server: &MockServer) -> GeminiSettings {
    let endpoint = Endpoint::GeminiApi {
        base_url: server.uri().parse().unwrap(),
    };
    let mut s = GeminiSettings::new(endpoint, keys(KEY));
    s.timeout = Duration::from_secs(5);
    s.retry = RetryPolicy {
        max_retries: 2,
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    s
}

fn gemini(server: &MockServer) -> GeminiProvider {
    GeminiProvider::new(settings(server), reqwest::Client::new())
}

fn checked(provider: impl ImageProvider + 'static) -> Checked {
    Checked::new(
        Arc::new(provider),
        Arc::new(Catalog::for_kind(catalog_entries())),
    )
}

async fn sent_bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect()
}

/// A fake `generateContent`: one image per request, shaped as `imageConfig` asks (1K long
/// side; 2K and 4K double it), for the conformance suite.
struct FakeGemini;

impl Respond for FakeGemini {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = request.body_json().unwrap();
        let config = &body["generationConfig"]["imageConfig"];
        let (w, h) = config["aspectRatio"]
            .as_str()
            .and_then(|r| r.split_once(':'))
            .map(|(w, h)| (w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()))
            .unwrap_or((1, 1));
        let long = match config["imageSize"].as_str() {
            Some("2K") => 2048,
            Some("4K") => 4096,
            _ => 1024,
        };
        let (width, height) = if w >= h {
            (long, long * h / w)
        } else {
            (long * w / h, long)
        };
        ResponseTemplate::new(200).set_body_json(answer(&[png(width, height, 7)]))
    }
}

#[tokio::test]
async fn gemini_conforms_against_a_fake_generate_content() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(header("x-goog-api-key", KEY))
        .respond_with(FakeGemini)
        .mount(&server)
        .await;
    let provider = checked(gemini(&server));
    let calls = conformance(&provider).await;
    // n = 2 is two requests of one image each.
    let received = server.received_requests().await.unwrap().len();
    assert!(received > calls, "{received} requests for {calls} calls");
}

/// Google's wire format for the shared rows.
struct GeminiStub;

impl ConformanceStub for GeminiStub {
    fn model(&self) -> &str {
        MODEL
    }

    fn answer_ok(&self, n: usize) -> Reply {
        let images: Vec<Vec<u8>> = (0..n).map(|_| img::png(8, 8)).collect();
        Reply::json(&answer(&images))
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let name = match status {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        let body = match fault {
            Fault::Field {
                field: "message",
                value,
            } => google_error(status, name, value, json!([])),
            Fault::Field {
                field: "code",
                value,
            } => google_error(status, value, "failed", json!([])),
            Fault::Field {
                field: "type",
                value,
            } => google_error(
                status,
                name,
                "failed",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": value,
                        "domain": "googleapis.com"}]),
            ),
            Fault::Field { value, .. } => google_error(
                status,
                name,
                "failed",
                json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": value, "description": "bad"}]}]),
            ),
            Fault::Refusal => google_error(
                status,
                "INVALID_ARGUMENT",
                "The request was blocked by a safety filter (Responsible AI practices).",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "PROHIBITED_CONTENT", "domain": "googleapis.com"}]),
            ),
        };
        Reply::error(status, &body)
    }

    fn answer_urls(&self, _urls: &[String]) -> Option<Reply> {
        // Images always arrive inline.
        None
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        None
    }
}

fn gemini_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let mut s = GeminiSettings::new(
        Endpoint::GeminiApi {
            base_url: target.base_url,
        },
        keys(target.key),
    );
    s.timeout = target.timeout;
    s.retry = RetryPolicy {
        max_retries: 0,
        retry_after_cap: target.retry_after_cap,
        ..RetryPolicy::default()
    };
    Box::new(GeminiProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn gemini_maps_every_error_row() {
    error_rows(&gemini_against, &GeminiStub).await;
}

#[tokio::test]
async fn gemini_withstands_a_hostile_upstream() {
    hostile_rows(&gemini_against, &GeminiStub).await;
}

// ---- quirks ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_ratio_and_resolution_become_image_config_and_the_answer_is_read_whole() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .and(header("x-goog-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[png(64, 36, 1)])))
        .expect(1)
        .mount(&server)
        .await;
    let mut request = GenerateRequest::new("a lighthouse at dusk", MODEL);
    request.options.aspect_ratio = Some("16:9".into());
    request.options.resolution = Some(Resolution::TwoK);
    request.options.seed = Some(42);
    request.options.extra = Some(serde_json::Map::from_iter([(
        "personGeneration".to_string(),
        json!("ALLOW_ADULT"),
    )]));
    let result = checked(gemini(&server))
        .generate_opts(&request, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    assert_eq!((result.images[0].width, result.images[0].height), (64, 36));
    assert_eq!(
        result.revised_prompt.as_deref(),
        Some("Here is your image.")
    );
    assert_eq!(result.request_id.as_deref(), Some("resp-abc123"));
    let usage = result.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(12), Some(1290))
    );
    let body = &sent_bodies(&server).await[0];
    assert_eq!(
        body["contents"][0]["parts"][0]["text"],
        "a lighthouse at dusk"
    );
    let config = &body["generationConfig"];
    assert_eq!(config["responseModalities"], json!(["TEXT", "IMAGE"]));
    assert_eq!(
        config["imageConfig"],
        json!({"aspectRatio": "16:9", "imageSize": "2K", "personGeneration": "ALLOW_ADULT"})
    );
    assert_eq!(config["seed"], 42);
    assert_eq!(result.sent["generationConfig"], *config);
    assert_eq!(result.sent["model"], MODEL);
}

#[tokio::test]
async fn an_openai_size_becomes_the_nearest_ratio_and_n_becomes_concurrent_requests() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[png(48, 32, 1)])))
        .expect(2)
        .mount(&server)
        .await;
    let mut request = GenerateRequest::new("a harbour", MODEL);
    request.options.size = Some("1536x1024".into());
    request.options.n = Some(2);
    let result = checked(gemini(&server))
        .generate_opts(&request, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.images.len(), 2);
    let image_config = &result.sent["generationConfig"]["imageConfig"];
    assert_eq!(
        *image_config,
        json!({"aspectRatio": "3:2", "imageSize": "1K"})
    );
    assert_eq!(result.sent["requests"], 2);
    for body in sent_bodies(&server).await {
        assert_eq!(body["generationConfig"]["imageConfig"], *image_config);
    }
    // A model without imageSize gets the ratio alone.
    let mut flash = request.clone();
    flash.model = "gemini-2.5-flash-image".into();
    flash.options.n = None;
    Mock::given(method("POST"))
        .and(path(
            "/v1beta/models/gemini-2.5-flash-image:generateContent",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[png(48, 32, 1)])))
        .mount(&server)
        .await;
    let result = checked(gemini(&server))
        .generate_opts(&flash, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(
        result.sent["generationConfig"]["imageConfig"],
        json!({"aspectRatio": "3:2"})
    );
}

#[tokio::test]
async fn an_edit_sends_its_images_and_mask_as_inline_parts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[png(16, 16, 3)])))
        .expect(1)
        .mount(&server)
        .await;
    let source = png(16, 16, 9);
    let reference = img::jpeg(8, 8);
    let mut edit = EditRequest::new(
        "make it night",
        MODEL,
        vec![
            InputImage::new(source.clone(), ImageFormat::Png, "a.png"),
            InputImage::new(reference.clone(), ImageFormat::Jpeg, "b.jpg"),
        ],
    );
    edit.mask = Some(InputImage::new(
        img::png_rgba(16, 16, [0, 0, 0, 0]),
        ImageFormat::Png,
        "mask.png",
    ));
    let result = checked(gemini(&server))
        .edit_opts(&edit, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    assert!(result.sent.contains_key("mask"));
    let body = &sent_bodies(&server).await[0];
    let parts = body["contents"][0]["parts"].as_array().unwrap();
    assert_eq!(parts[0]["text"], "make it night");
    assert_eq!(parts[1]["inlineData"]["mimeType"], "image/png");
    assert_eq!(parts[1]["inlineData"]["data"], b64(&source));
    assert_eq!(parts[2]["inlineData"]["mimeType"], "image/jpeg");
    assert_eq!(parts[2]["inlineData"]["data"], b64(&reference));
    assert!(parts[3]["text"].as_str().unwrap().contains("mask"));
    assert_eq!(parts[4]["inlineData"]["mimeType"], "image/png");
}

async fn one_answer(status: u16, body: Value) -> imagegen_providers::ProviderError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&server)
        .await;
    let err = gemini(&server)
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err}");
    err
}

#[tokio::test]
async fn safety_blocks_under_http_200_are_content_policy_with_the_reason() {
    let prompt_blocked = one_answer(
        200,
        json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "not allowed"},
               "usageMetadata": {"promptTokenCount": 5}}),
    )
    .await;
    assert_eq!(prompt_blocked.kind, ErrorKind::ContentPolicy);
    assert!(
        prompt_blocked.message.contains("PROHIBITED_CONTENT"),
        "{prompt_blocked}"
    );
    assert_eq!(
        prompt_blocked.provider_code.as_deref(),
        Some("PROHIBITED_CONTENT")
    );
    assert!(!prompt_blocked.retryable);
    let image_blocked = one_answer(
        200,
        json!({"candidates": [{"finishReason": "IMAGE_SAFETY", "finishMessage": "withheld", "index": 0}]}),
    )
    .await;
    assert_eq!(image_blocked.kind, ErrorKind::ContentPolicy);
    assert!(
        image_blocked.message.contains("IMAGE_SAFETY"),
        "{image_blocked}"
    );
    // The error form (HTTP 400 from the safety system) is the same kind.
    let error_form = one_answer(
        400,
        google_error(
            400,
            "INVALID_ARGUMENT",
            "blocked by a safety filter",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SAFETY"}]),
        ),
    )
    .await;
    assert_eq!(error_form.kind, ErrorKind::ContentPolicy);
}

#[tokio::test]
async fn an_answer_with_no_image_and_no_block_is_a_clear_bad_response() {
    let text_only = one_answer(
        200,
        json!({"candidates": [{"content": {"parts": [{"text": "I can only describe it."}]}, "finishReason": "STOP"}]}),
    )
    .await;
    assert_eq!(text_only.kind, ErrorKind::BadResponse);
    assert!(text_only.message.contains("no image"), "{text_only}");
    assert!(
        text_only.message.contains("I can only describe it"),
        "{text_only}"
    );
    let no_image = one_answer(200, json!({"candidates": [{"finishReason": "NO_IMAGE"}]})).await;
    assert_eq!(no_image.kind, ErrorKind::BadResponse);
    assert!(no_image.message.contains("NO_IMAGE"), "{no_image}");
    let wrong_types = one_answer(
        200,
        json!({"candidates": "KEY AIza-SENTINEL-gemini-0123456789"}),
    )
    .await;
    assert_eq!(wrong_types.kind, ErrorKind::BadResponse);
    let not_base64 = one_answer(
        200,
        json!({"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "***"}}]}}]}),
    )
    .await;
    assert_eq!(not_base64.kind, ErrorKind::BadResponse);
}

#[tokio::test]
async fn retry_info_is_honoured_as_the_wait_before_the_retry() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(429).set_body_json(google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.2s"}
            ]),
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[png(8, 8, 1)])))
        .mount(&server)
        .await;
    let (events, mut rx) = Events::channel();
    let result = gemini(&server)
        .generate_opts(
            &GenerateRequest::new("x", MODEL),
            &CallOptions::new().with_events(events),
        )
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    let mut waits = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let ProviderEvent::Retrying { delay, .. } = event {
            waits.push(delay);
        }
    }
    assert_eq!(waits, [Duration::from_millis(200)]);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_used_up_daily_quota_is_not_retried_and_a_rejected_key_is_auth() {
    let quota = one_answer(
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota",
            json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]),
        ),
    )
    .await;
    assert_eq!(quota.kind, ErrorKind::QuotaExhausted);
    assert_eq!(quota.attempts, 1);
    let key = one_answer(
        400,
        google_error(400, "INVALID_ARGUMENT", &format!("API key not valid: {KEY}"),
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])),
    )
    .await;
    assert_eq!(key.kind, ErrorKind::Auth);
    assert!(key.message.contains("…6789"), "{key}");
    let denied = one_answer(
        403,
        google_error(403, "PERMISSION_DENIED", "denied", json!([])),
    )
    .await;
    assert_eq!(denied.kind, ErrorKind::Permission);
    let missing = one_answer(
        404,
        google_error(
            404,
            "NOT_FOUND",
            "models/gemini-3-pro-image is not found for API version v1beta",
            json!([]),
        ),
    )
    .await;
    assert_eq!(missing.kind, ErrorKind::NotFound);
    assert!(missing.model_unavailable);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_a_cancelled_call_ends_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ROUTE))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(answer(&[png(8, 8, 1)]))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(200);
    let err = GeminiProvider::new(s, reqwest::Client::new())
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(err.request_sent);

    let cancel = CancellationToken::new();
    let provider = gemini(&server);
    let request = GenerateRequest::new("x", MODEL);
    let options = CallOptions::new().with_cancel(cancel.clone());
    let call = provider.generate_opts(&request, &options);
    let started = std::time::Instant::now();
    let (outcome, _) = tokio::join!(call, async {
        // Cancelled once the request is in flight at the stub.
        while server.received_requests().await.unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
    });
    let err = outcome.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A script printing `tok-SENTINEL-N`, N counting its runs.
fn token_script(dir: &std::path::Path) -> Vec<String> {
    let count = dir.join("count");
    let script = dir.join("token.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho x >> {c}\nn=$(wc -l < {c} | tr -d ' ')\necho \"tok-SENTINEL-$n\"\n",
            c = count.display()
        ),
    )
    .unwrap();
    vec!["sh".into(), script.display().to_string()]
}

#[tokio::test]
async fn vertex_uses_a_script_token_and_fetches_a_fresh_one_after_a_401() {
    let server = MockServer::start().await;
    let route = "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-3-pro-image:generateContent";
    Mock::given(method("POST"))
        .and(path(route))
        .and(header("authorization", "Bearer tok-SENTINEL-1"))
        .respond_with(ResponseTemplate::new(401).set_body_json(google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials: tok-SENTINEL-1",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_EXPIRED"}]),
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(route))
        .and(header("authorization", "Bearer tok-SENTINEL-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[png(8, 8, 1)])))
        .expect(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::Vertex {
        base_url: server.uri().parse().unwrap(),
        project: "my-proj".into(),
        location: "us-central1".into(),
    };
    let mut s = GeminiSettings::new(endpoint, Arc::new(KeyPool::empty()));
    s.tokens = Some(Arc::new(Tokens::new(
        TokenSource::Command(token_script(dir.path())),
        Duration::from_secs(3600),
    )));
    let provider = GeminiProvider::new(s, reqwest::Client::new());
    let request = GenerateRequest::new("x", MODEL);
    let result = provider
        .generate_opts(&request, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    // The fresh token is cached: the next call runs no command and is sent once.
    provider
        .generate_opts(&request, &CallOptions::new())
        .await
        .unwrap();
    let runs = std::fs::read_to_string(dir.path().join("count")).unwrap();
    assert_eq!(runs.lines().count(), 2);
    for r in server.received_requests().await.unwrap() {
        assert!(r.headers.get("x-goog-api-key").is_none());
    }
}

#[tokio::test]
async fn a_vertex_token_refused_twice_is_auth_and_never_shown() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(google_error(
            401,
            "UNAUTHENTICATED",
            "bad token tok-SENTINEL-1 tok-SENTINEL-2",
            json!([]),
        )))
        .expect(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::Vertex {
        base_url: server.uri().parse().unwrap(),
        project: "p".into(),
        location: "global".into(),
    };
    let mut s = GeminiSettings::new(endpoint, Arc::new(KeyPool::empty()));
    s.tokens = Some(Arc::new(Tokens::new(
        TokenSource::Command(token_script(dir.path())),
        Duration::from_secs(3600),
    )));
    let err = GeminiProvider::new(s, reqwest::Client::new())
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), (ErrorKind::Auth, Some(401)));
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("SENTINEL"), "{shown}");
    assert!(shown.contains("access token"), "{shown}");
}

#[tokio::test]
async fn the_model_listing_keeps_the_image_models_that_generate_content() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1beta/models"))
        .and(header("x-goog-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"models": [
            {"name": "models/gemini-3-pro-image", "supportedGenerationMethods": ["generateContent", "countTokens"]},
            {"name": "models/gemini-nano-banana-2.1", "supportedGenerationMethods": ["generateContent"]},
            {"name": "models/gemini-3-pro", "supportedGenerationMethods": ["generateContent"]},
            {"name": "models/imagen-4.0-generate-001", "supportedGenerationMethods": ["predict"]},
            {"name": format!("models/image {KEY}"), "supportedGenerationMethods": ["generateContent"]},
        ]})))
        .mount(&server)
        .await;
    let ids: Vec<String> = gemini(&server)
        .list_models()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["gemini-3-pro-image", "gemini-nano-banana-2.1"]);
}

#[tokio::test]
async fn a_vertex_answer_echoing_the_token_shows_only_its_fingerprint() {
    let server = MockServer::start().await;
    let mut body = answer(&[png(8, 8, 1)]);
    body["candidates"][0]["content"]["parts"][0]["text"] = "made with tok-SENTINEL-1".into();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::Vertex {
        base_url: server.uri().parse().unwrap(),
        project: "p".into(),
        location: "us-east5".into(),
    };
    let mut s = GeminiSettings::new(endpoint, Arc::new(KeyPool::empty()));
    s.tokens = Some(Arc::new(Tokens::new(
        TokenSource::Command(token_script(dir.path())),
        Duration::from_secs(3600),
    )));
    let result = GeminiProvider::new(s, reqwest::Client::new())
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap();
    let text = result.revised_prompt.unwrap();
    assert!(
        text.starts_with("made with") && !text.contains("SENTINEL"),
        "{text}"
    );
}
