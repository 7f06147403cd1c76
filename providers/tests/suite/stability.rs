//! The Stability provider against a wiremock stub speaking the `stable-image` routes as
//! Stability does: the shared conformance suite and error and hostile rows, then its quirks
//! (multipart fields, image bytes or JSON answers, `CONTENT_FILTERED`, moderation and credits,
//! edits by inpainting or image-to-image).

use std::{io::Cursor, sync::Arc, time::Duration};

use crate::common::Form;
use base64::Engine as _;
use imagegen_providers::{
    http::RetryPolicy,
    keys::KeyPool,
    layers::Checked,
    stability::{catalog_entries, StabilityProvider, StabilitySettings},
    testing::{conformance, error_rows, hostile_rows, ConformanceStub, Fault, StubTarget},
    CallOptions, Catalog, EditRequest, ErrorKind, Events, GenerateRequest, ImageFormat,
    ImageProvider, InputImage, ProviderEvent,
};
use imagegen_testkit::{img, Reply};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

const KEY: &str = "sk-SENTINEL-stability-0123456789";
const MODEL: &str = "sd3.5-large";
const SD3: &str = "/v2beta/stable-image/generate/sd3";

fn encode(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let pixels = image::RgbImage::from_pixel(width, height, image::Rgb([20, 120, 200]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// An image answer as `Accept: image/*` gets it.
fn image_reply(bytes: Vec<u8>, mime: &str, finish: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("finish-reason", finish)
        .insert_header("seed", "1234")
        .set_body_raw(bytes, mime)
}

fn keys(key: &str) -> Arc<KeyPool> {
    Arc::new(KeyPool::new(
        [(SecretString::from(key.to_string()), "test".to_string())],
        Duration::from_secs(600),
    ))
}

fn settings(server: &MockServer) -> StabilitySettings {
    let mut s = StabilitySettings::new(server.uri().parse().unwrap(), keys(KEY));
    s.timeout = Duration::from_secs(5);
    s.retry = RetryPolicy {
        max_retries: 2,
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    s
}

fn stability(server: &MockServer) -> StabilityProvider {
    StabilityProvider::new(settings(server), reqwest::Client::new())
}

fn checked(provider: impl ImageProvider + 'static) -> Checked {
    Checked::new(
        Arc::new(provider),
        Arc::new(Catalog::for_kind(catalog_entries())),
    )
}

async fn forms(server: &MockServer) -> Vec<Form> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| Form::parse(r).expect("a multipart body"))
        .collect()
}

/// A fake Stability: one image per request, in the asked format, shaped as `aspect_ratio`
/// says (1 megapixel), or the input's size for edits.
struct FakeStability;

impl Respond for FakeStability {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form = Form::parse(request).expect("a multipart body");
        assert!(form.text("prompt").is_some(), "no prompt");
        let (width, height) = match form.files("image").first() {
            Some(image) => {
                let decoded = image::load_from_memory(&image.body).unwrap();
                (decoded.width(), decoded.height())
            }
            None => match form.text("aspect_ratio").as_deref() {
                Some("3:2") => (1216, 832),
                _ => (1024, 1024),
            },
        };
        let (format, mime) = match form.text("output_format").as_deref() {
            Some("jpeg") => (image::ImageFormat::Jpeg, "image/jpeg"),
            Some("webp") => (image::ImageFormat::WebP, "image/webp"),
            _ => (image::ImageFormat::Png, "image/png"),
        };
        image_reply(encode(width, height, format), mime, "SUCCESS")
    }
}

#[tokio::test]
async fn stability_conforms_against_a_fake_stable_image_api() {
    let server = MockServer::start().await;
    for route in ["generate/sd3", "edit/inpaint"] {
        Mock::given(method("POST"))
            .and(path(format!("/v2beta/stable-image/{route}")))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(header("accept", "image/*"))
            .respond_with(FakeStability)
            .mount(&server)
            .await;
    }
    let provider = checked(stability(&server));
    let calls = conformance(&provider).await;
    let received = server.received_requests().await.unwrap().len();
    assert!(received > calls, "{received} requests for {calls} calls");
}

/// Stability's wire format for the shared rows.
struct StabilityStub;

impl ConformanceStub for StabilityStub {
    fn model(&self) -> &str {
        MODEL
    }

    fn answer_ok(&self, _n: usize) -> Reply {
        // One image per request, whatever was asked.
        Reply::bytes(200, "image/png", img::png(8, 8))
            .header("finish-reason", "SUCCESS")
            .header("seed", "1")
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let mut body = json!({"id": "e1", "name": "bad_request", "errors": ["failed"]});
        match fault {
            Fault::Field {
                field: "message",
                value,
            } => body["errors"] = json!([value]),
            Fault::Field {
                field: "code",
                value,
            } => body["name"] = value.into(),
            Fault::Field { value, .. } => body["id"] = value.into(),
            Fault::Refusal => {
                body["name"] = "content_moderation".into();
                body["errors"] =
                    json!(["Your request was flagged by our content moderation system."]);
            }
        }
        Reply::error(status, &body)
    }

    fn answer_urls(&self, _urls: &[String]) -> Option<Reply> {
        None
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        None
    }
}

fn stability_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let mut s = StabilitySettings::new(target.base_url, keys(target.key));
    s.timeout = target.timeout;
    s.retry = RetryPolicy {
        max_retries: 0,
        retry_after_cap: target.retry_after_cap,
        ..RetryPolicy::default()
    };
    Box::new(StabilityProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn stability_maps_every_error_row() {
    error_rows(&stability_against, &StabilityStub).await;
}

#[tokio::test]
async fn stability_withstands_a_hostile_upstream() {
    hostile_rows(&stability_against, &StabilityStub).await;
}

// ---- quirks ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_generation_sends_its_fields_as_a_form_and_reports_them_as_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SD3))
        .respond_with(image_reply(
            encode(48, 32, image::ImageFormat::Jpeg),
            "image/jpeg",
            "SUCCESS",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let mut request = GenerateRequest::new("a lighthouse", MODEL);
    request.options.size = Some("1536x1024".into());
    request.options.seed = Some(7);
    request.options.output_format = Some(ImageFormat::Jpeg);
    request.options.extra = Some(serde_json::Map::from_iter([(
        "negative_prompt".to_string(),
        json!("blurry"),
    )]));
    let result = checked(stability(&server))
        .generate_opts(&request, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    assert_eq!(result.images[0].format, ImageFormat::Jpeg);
    let form = &forms(&server).await[0];
    assert_eq!(form.text("prompt").as_deref(), Some("a lighthouse"));
    assert_eq!(form.text("model").as_deref(), Some(MODEL));
    assert_eq!(form.text("aspect_ratio").as_deref(), Some("3:2"));
    assert_eq!(form.text("output_format").as_deref(), Some("jpeg"));
    assert_eq!(form.text("seed").as_deref(), Some("7"));
    assert_eq!(form.text("negative_prompt").as_deref(), Some("blurry"));
    assert_eq!(
        Value::Object(result.sent.clone()),
        json!({"route": "generate/sd3", "model": MODEL, "aspect_ratio": "3:2",
               "output_format": "jpeg", "seed": 7, "negative_prompt": "blurry"})
    );
    // An undeclared extra is refused before anything is sent.
    let mut core = GenerateRequest::new("x", "stable-image-core");
    core.options.extra = Some(serde_json::Map::from_iter([(
        "cfg_scale".to_string(),
        json!(4),
    )]));
    let err = checked(stability(&server))
        .generate_opts(&core, &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn ultra_and_core_use_their_own_routes_and_a_json_answer_is_read() {
    let server = MockServer::start().await;
    let png = encode(16, 16, image::ImageFormat::Png);
    Mock::given(method("POST"))
        .and(path("/v2beta/stable-image/generate/ultra"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "image": base64::engine::general_purpose::STANDARD.encode(&png),
            "finish_reason": "SUCCESS",
            "seed": 99,
        })))
        .expect(2)
        .mount(&server)
        .await;
    let mut request = GenerateRequest::new("x", "stable-image-ultra");
    request.options.n = Some(2);
    let result = checked(stability(&server))
        .generate_opts(&request, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.images.len(), 2);
    assert_eq!(result.sent["requests"], 2);
    assert!(!result.sent.contains_key("model"));
    for form in forms(&server).await {
        assert_eq!(form.text("model"), None);
    }
}

#[tokio::test]
async fn a_filtered_finish_is_content_policy_in_either_answer_form() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SD3))
        .respond_with(image_reply(
            encode(8, 8, image::ImageFormat::Png),
            "image/png",
            "CONTENT_FILTERED",
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2beta/stable-image/generate/core"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "image": "aGVsbG8=", "finish_reason": "CONTENT_FILTERED", "seed": 1
        })))
        .mount(&server)
        .await;
    for model in [MODEL, "stable-image-core"] {
        let err = stability(&server)
            .generate_opts(&GenerateRequest::new("x", model), &CallOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentPolicy, "{model}: {err}");
        assert_eq!(err.provider_code.as_deref(), Some("CONTENT_FILTERED"));
        assert!(!err.retryable);
    }
}

async fn one_answer(reply: ResponseTemplate) -> imagegen_providers::ProviderError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SD3))
        .respond_with(reply)
        .mount(&server)
        .await;
    let err = stability(&server)
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err}");
    err
}

#[tokio::test]
async fn moderation_credits_keys_and_broken_answers_are_classified() {
    let moderated = one_answer(ResponseTemplate::new(403).set_body_json(json!({
        "id": "x1", "name": "content_moderation",
        "errors": ["Your request was flagged by our content moderation system."]
    })))
    .await;
    assert_eq!(moderated.kind, ErrorKind::ContentPolicy);
    let credits = one_answer(ResponseTemplate::new(402).set_body_json(json!({
        "id": "x2", "name": "payment_required", "errors": ["You lack sufficient credits"]
    })))
    .await;
    assert_eq!(credits.kind, ErrorKind::QuotaExhausted);
    assert_eq!(credits.attempts, 1);
    let key = one_answer(ResponseTemplate::new(401).set_body_json(json!({
        "id": "x3", "name": "unauthorized", "errors": [format!("bad key {KEY}")]
    })))
    .await;
    assert_eq!(key.kind, ErrorKind::Auth);
    assert!(key.message.contains("…6789"), "{key}");
    let not_image = one_answer(image_reply(
        b"not an image".to_vec(),
        "image/png",
        "SUCCESS",
    ))
    .await;
    assert_eq!(not_image.kind, ErrorKind::BadResponse);
    let no_image =
        one_answer(ResponseTemplate::new(200).set_body_json(json!({"finish_reason": "SUCCESS"})))
            .await;
    assert_eq!(no_image.kind, ErrorKind::BadResponse);
    let error_finish = one_answer(image_reply(
        encode(8, 8, image::ImageFormat::Png),
        "image/png",
        "ERROR",
    ))
    .await;
    assert_eq!(error_finish.kind, ErrorKind::BadResponse);
    assert!(error_finish.message.contains("ERROR"), "{error_finish}");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_says() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SD3))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0.2")
                .set_body_json(json!({"id": "r", "name": "rate_limit_exceeded",
                                      "errors": ["You have exceeded the rate limit"]})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(SD3))
        .respond_with(image_reply(
            encode(8, 8, image::ImageFormat::Png),
            "image/png",
            "SUCCESS",
        ))
        .mount(&server)
        .await;
    let (events, mut rx) = Events::channel();
    stability(&server)
        .generate_opts(
            &GenerateRequest::new("x", MODEL),
            &CallOptions::new().with_events(events),
        )
        .await
        .unwrap();
    let mut waits = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let ProviderEvent::Retrying { delay, .. } = event {
            waits.push(delay);
        }
    }
    assert_eq!(waits, [Duration::from_millis(200)]);
}

#[tokio::test]
async fn edits_inpaint_with_a_mask_and_go_image_to_image_without() {
    let server = MockServer::start().await;
    for route in ["generate/sd3", "edit/inpaint"] {
        Mock::given(method("POST"))
            .and(path(format!("/v2beta/stable-image/{route}")))
            .respond_with(FakeStability)
            .mount(&server)
            .await;
    }
    let source = encode(16, 16, image::ImageFormat::Png);
    let mut edit = EditRequest::new(
        "add a moon",
        MODEL,
        vec![InputImage::new(source.clone(), ImageFormat::Png, "a.png")],
    );
    let provider = checked(stability(&server));
    let result = provider
        .edit_opts(&edit, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.sent["route"], "generate/sd3");
    assert_eq!(result.sent["mode"], "image-to-image");
    edit.mask = Some(InputImage::new(
        img::png_rgba(16, 16, [0, 0, 0, 0]),
        ImageFormat::Png,
        "mask.png",
    ));
    let result = provider
        .edit_opts(&edit, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(result.sent["route"], "edit/inpaint");
    let sent = forms(&server).await;
    let img2img = &sent[0];
    assert_eq!(img2img.text("strength").as_deref(), Some("0.6"));
    assert_eq!(img2img.files("image")[0].body, source);
    assert_eq!(img2img.text("aspect_ratio"), None);
    let inpaint = &sent[1];
    assert_eq!(inpaint.text("mode"), None);
    let mask = image::load_from_memory(&inpaint.files("mask")[0].body)
        .unwrap()
        .to_luma8();
    // Fully transparent: paint everywhere, which Stability reads as white.
    assert!(mask.pixels().all(|p| p[0] == 255));
    // Core cannot edit without a mask: refused before anything is sent.
    let mut core = edit.clone();
    core.model = "stable-image-core".into();
    core.mask = None;
    let before = server.received_requests().await.unwrap().len();
    let err = provider
        .edit_opts(&core, &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("mask"));
    assert_eq!(server.received_requests().await.unwrap().len(), before);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_a_cancelled_call_ends_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SD3))
        .respond_with(
            image_reply(
                encode(8, 8, image::ImageFormat::Png),
                "image/png",
                "SUCCESS",
            )
            .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(200);
    let err = StabilityProvider::new(s, reqwest::Client::new())
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");

    let cancel = CancellationToken::new();
    let provider = stability(&server);
    let request = GenerateRequest::new("x", MODEL);
    let options = CallOptions::new().with_cancel(cancel.clone());
    let started = std::time::Instant::now();
    let (outcome, _) = tokio::join!(provider.generate_opts(&request, &options), async {
        while server.received_requests().await.unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
    });
    let err = outcome.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
