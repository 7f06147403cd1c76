//! The conformance suite every provider passes: the mock in every build, and each HTTP provider
//! against a fake upstream.

use std::{io::Cursor, sync::Arc};

use crate::common::Form;
use base64::Engine as _;
use imagegen_providers::{
    layers::Checked,
    mock::{MockProvider, MockSettings},
    openai::{OpenAiProvider, OpenAiSettings},
    testing::{conformance, error_rows, hostile_rows, ConformanceStub, Fault, StubTarget},
    validate::parse_size,
    Catalog, ImageProvider,
};
use imagegen_testkit::{img, openai as testkit_openai, Chunk, Reply};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

/// `provider` behind the catalog checks every caller puts in front of it: the suite asserts
/// what callers see, refusals included.
fn checked(provider: impl ImageProvider + 'static) -> Checked {
    Checked::new(Arc::new(provider), Arc::new(Catalog::builtin()))
}

#[tokio::test]
async fn mock_provider_conforms() {
    let provider = checked(MockProvider::new(MockSettings::default()));
    conformance(&provider).await;
}

/// A fake OpenAI: answers each generation with `n` images of the requested size and format,
/// or with a stream of partial images and the final one when asked to stream.
struct FakeOpenAi;

/// An animated GIF of `frames` frames, base64 as the API sends it.
fn encoded_gif(width: u32, height: u32, frames: u64) -> String {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 30);
        for i in 0..frames {
            let pixels = image::RgbaImage::from_pixel(
                width,
                height,
                image::Rgba([200, 20 * i as u8, 0, 255]),
            );
            encoder.encode_frame(image::Frame::new(pixels)).unwrap();
        }
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// SVG markup, base64 as the API sends it (the raw file, no `data:` prefix).
fn encoded_svg(width: u32, height: u32) -> String {
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\"><circle cx=\"10\" cy=\"10\" r=\"5\" fill=\"red\"/></svg>"
    );
    base64::engine::general_purpose::STANDARD.encode(svg)
}

fn encoded(width: u32, height: u32, shade: u8, format: image::ImageFormat) -> String {
    let pixels = image::RgbImage::from_pixel(width, height, image::Rgb([200, 20, shade]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, format)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

fn sse(name: &str, mut data: Value) -> String {
    data["type"] = name.into();
    format!("event: {name}\ndata: {data}\n\n")
}

impl Respond for FakeOpenAi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        // Edits and variations arrive as forms; their text fields are read like JSON ones.
        let (body, events): (Value, &str) = match Form::parse(request) {
            Some(form) => {
                assert!(
                    !form.files("image[]").is_empty() || !form.files("image").is_empty(),
                    "an upload without an image"
                );
                let fields: serde_json::Map<String, Value> = form
                    .texts()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
                    .collect();
                (Value::Object(fields), "image_edit")
            }
            None => (request.body_json().unwrap(), "image_generation"),
        };
        let n = body["n"].as_u64().unwrap_or(1);
        let (width, height) = body["size"]
            .as_str()
            .and_then(parse_size)
            .unwrap_or((1024, 1024));
        let media = match body["output_format"].as_str() {
            Some("gif") => Some(encoded_gif(
                width,
                height,
                body["frame_count"].as_u64().unwrap_or(9),
            )),
            Some("svg") => Some(encoded_svg(width, height)),
            _ => None,
        };
        if let Some(image) = media {
            return ResponseTemplate::new(200)
                .set_body_json(json!({"created": 1, "data": [{"b64_json": image}]}));
        }
        let format = match body["output_format"].as_str().unwrap_or("png") {
            "jpeg" => image::ImageFormat::Jpeg,
            "webp" => image::ImageFormat::WebP,
            _ => image::ImageFormat::Png,
        };
        if body["stream"] == json!(true) {
            let partials = body["partial_images"].as_u64().unwrap_or(0);
            let mut text: String = (0..partials)
                .map(|i| {
                    let image = encoded(width / 4, height / 4, i as u8, format);
                    let data = json!({"b64_json": image, "partial_image_index": i});
                    sse(&format!("{events}.partial_image"), data)
                })
                .collect();
            let image = encoded(width, height, 0, format);
            text += &sse(&format!("{events}.completed"), json!({"b64_json": image}));
            return ResponseTemplate::new(200).set_body_raw(text, "text/event-stream");
        }
        let data: Vec<Value> = (0..n)
            .map(|i| json!({"b64_json": encoded(width, height, 20 * i as u8, format)}))
            .collect();
        ResponseTemplate::new(200)
            .insert_header("x-request-id", "req_conformance")
            .set_body_json(json!({
                "created": 1,
                "data": data,
                "usage": {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110}
            }))
    }
}

#[tokio::test]
async fn openai_provider_conforms_against_a_fake_upstream() {
    let server = MockServer::start().await;
    for route in ["generations", "edits", "variations"] {
        Mock::given(method("POST"))
            .and(path(format!("/v1/images/{route}")))
            .respond_with(FakeOpenAi)
            .mount(&server)
            .await;
    }
    let base = format!("{}/v1", server.uri()).parse().unwrap();
    let settings = OpenAiSettings::new(base, Some("sk-test-0000000000000000".into()));
    let provider = checked(OpenAiProvider::new(settings, reqwest::Client::new()));
    let calls = conformance(&provider).await;
    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received.len(),
        calls,
        "one upstream request per call, no retries"
    );
}

// ---- error and hostile rows ---------------------------------------------------------------

/// OpenAI's wire format, as the error and hostile rows script it.
struct OpenAiStub;

impl ConformanceStub for OpenAiStub {
    fn model(&self) -> &str {
        "gpt-image-2.6-flare"
    }

    fn answer_ok(&self, n: usize) -> Reply {
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": img::b64(&img::png(8, 8)), "revised_prompt": "fine"}))
            .collect();
        Reply::json(&json!({"created": 1, "data": data}))
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
                "message": "Your request was rejected by the safety system.",
                "type": "image_generation_user_error",
                "param": null,
                "code": "moderation_blocked"
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
            Chunk::Pause(std::time::Duration::from_millis(50)),
            Chunk::Drop,
        ]))
    }
}

/// An OpenAI provider against a row's fake upstream, with retries off.
fn openai_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let mut s = OpenAiSettings::new(target.base_url, Some(target.key.into()));
    s.max_retries = 0;
    s.retry_after_cap = target.retry_after_cap;
    s.timeout = target.timeout;
    Box::new(OpenAiProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn openai_provider_maps_every_error_row() {
    error_rows(&openai_against, &OpenAiStub).await;
}

#[tokio::test]
async fn openai_provider_withstands_a_hostile_upstream() {
    hostile_rows(&openai_against, &OpenAiStub).await;
}
