//! The conformance suite every provider passes: the mock in every build, and each HTTP provider
//! against a fake upstream.

mod common;

use std::io::Cursor;

use base64::Engine as _;
use common::Form;
use std::sync::Arc;

use imagegen_providers::{
    image_info::probe,
    layers::Checked,
    mock::{MockProvider, MockSettings},
    openai::{OpenAiProvider, OpenAiSettings},
    validate::{check, check_edit, check_edit_images, parse_size},
    Catalog, EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult, ImageFormat,
    ImageProvider, ImageProviderExt, InputImage, Param, ProviderEvent, SvgOptions,
    VariationRequest,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

/// Checks what every provider must do, and returns how many `generate` calls it made.
/// `provider` behind the catalog checks every caller puts in front of it.
fn checked(provider: impl ImageProvider + 'static) -> Checked {
    Checked::new(Arc::new(provider), Arc::new(Catalog::builtin()))
}

async fn conformance(provider: &dyn ImageProvider) -> usize {
    let kind = provider.kind();
    assert!(
        !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{kind}"
    );
    let model = provider.default_model().to_string();
    assert!(!model.is_empty());
    let models = provider.models();
    assert!(
        models.contains(&model),
        "{kind}: default model {model} not in {models:?}"
    );
    for m in &models {
        let caps = provider.capabilities(m);
        assert!(caps.max_n >= 1 && caps.max_prompt_chars > 0, "{kind}: {m}");
        assert!(!caps.formats.is_empty(), "{kind}: {m}");
    }
    assert!(!provider.capabilities("no-such-model-xyz").known, "{kind}");

    let caps = provider.capabilities(&model);
    assert!(caps.known, "{kind}: {model}");
    assert!(caps.max_n >= 2, "{kind}: {model} should allow n = 2");
    let size = caps.sizes.iter().find(|s| parse_size(s).is_some()).cloned();
    let (width, height) = size.as_deref().and_then(parse_size).unwrap_or((1024, 1024));

    let mut calls = 0;
    let mut generate = |request: GenerateRequest| {
        check(&request, &caps)
            .unwrap_or_else(|e| panic!("{kind}: the suite's request is invalid: {e}"));
        calls += 1;
        async move {
            provider
                .generate(&request)
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
        }
    };

    let mut one = GenerateRequest::new("conformance: a red circle on white", &model);
    one.size = size.clone();
    let result = generate(one.clone()).await;
    assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Png);

    let mut two = one.clone();
    two.n = 2;
    let result = generate(two).await;
    assert_images(kind, &result, &model, 2, (width, height), ImageFormat::Png);

    if caps.takes(Param::OutputFormat) {
        for format in caps
            .formats
            .iter()
            .copied()
            .filter(|f| *f != ImageFormat::Png && f.is_raster())
        {
            let mut req = one.clone();
            req.output_format = Some(format);
            let result = generate(req).await;
            assert_images(kind, &result, &model, 1, (width, height), format);
        }
    }

    // An animation: a small frame, as GIF frame caps require, and more than one frame.
    if caps.formats.contains(&ImageFormat::Gif) && caps.gif.is_some() {
        let mut req = one.clone();
        req.size = Some(format!("{GIF_SIDE}x{GIF_SIDE}"));
        req.output_format = Some(ImageFormat::Gif);
        req.frame_count = Some(3);
        let result = generate(req).await;
        assert_images(
            kind,
            &result,
            &model,
            1,
            (GIF_SIDE, GIF_SIDE),
            ImageFormat::Gif,
        );
    }

    // Vector markup, written by the text model `svg.model` names.
    if caps.formats.contains(&ImageFormat::Svg) {
        let mut req = one.clone();
        req.output_format = Some(ImageFormat::Svg);
        req.svg = Some(SvgOptions {
            model: Some("gpt-5.2".into()),
            reasoning: None,
        });
        let result = generate(req).await;
        assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Svg);
    }

    if caps.takes(Param::Stream) {
        let mut req = one.clone();
        req.partial_images = Some(2);
        check(&req, &caps).unwrap_or_else(|e| panic!("{kind}: {e}"));
        calls += 1;
        let (events, mut rx) = Events::channel();
        let result = provider
            .generate_with_events(&req, &events)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Png);
        drop(events);
        let mut partials = Vec::new();
        while let Some(event) = rx.recv().await {
            if let ProviderEvent::PartialImage { index, image } = event {
                image::load_from_memory(&image.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
                partials.push(index);
            }
        }
        assert_eq!(partials, [0, 1], "{kind}: partial images in order");
    }

    // Edits and variations start from an image the provider made itself.
    let source = InputImage::new(
        result.images[0].bytes.clone(),
        ImageFormat::Png,
        "image-1.png",
    );
    if caps.edit {
        calls += edits(provider, &caps, &one, source.clone()).await;
    }
    let variation = VariationRequest::new(&model, source);
    match provider.variation(&variation).await {
        Ok(result) if caps.variations => {
            calls += 1;
            assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Png);
        }
        Ok(_) => panic!("{kind}: {model} made a variation though it cannot"),
        Err(e) => {
            assert!(!caps.variations, "{kind}: {e}");
            assert_eq!(e.kind, ErrorKind::Unsupported, "{kind}: {e}");
            assert!(!e.retryable, "{kind}");
        }
    }
    calls
}

/// Edits of `source` as `like` asks: one and two images, other formats, a mask, partial images.
async fn edits(
    provider: &dyn ImageProvider,
    caps: &imagegen_providers::ModelCapabilities,
    like: &GenerateRequest,
    source: InputImage,
) -> usize {
    let kind = provider.kind();
    let model = like.model.as_str();
    let (width, height) = source_size(&source);
    let mut calls = 0;
    let mut edit = |request: EditRequest, events: Events| {
        check_edit(&request, caps).unwrap_or_else(|e| panic!("{kind}: invalid edit: {e}"));
        check_edit_images(&request).unwrap_or_else(|e| panic!("{kind}: invalid images: {e}"));
        calls += 1;
        async move {
            provider
                .edit_with_events(&request, &events)
                .await
                .unwrap_or_else(|e| panic!("{kind}: edit: {e}"))
        }
    };

    let mut one = EditRequest::new("conformance: make the circle blue", model, vec![source]);
    one.size = like.size.clone();
    let result = edit(one.clone(), Events::none()).await;
    assert_images(kind, &result, model, 1, (width, height), ImageFormat::Png);

    let mut two = one.clone();
    two.n = 2;
    let mask = image::RgbaImage::from_pixel(width, height, image::Rgba([0, 0, 0, 0]));
    let mut mask_png = Cursor::new(Vec::new());
    mask.write_to(&mut mask_png, image::ImageFormat::Png)
        .unwrap();
    two.mask = Some(InputImage::new(
        mask_png.into_inner(),
        ImageFormat::Png,
        "mask.png",
    ));
    let result = edit(two, Events::none()).await;
    assert_images(kind, &result, model, 2, (width, height), ImageFormat::Png);

    if caps.takes(Param::OutputFormat) && caps.formats.contains(&ImageFormat::Jpeg) {
        let mut req = one.clone();
        req.output_format = Some(ImageFormat::Jpeg);
        let result = edit(req, Events::none()).await;
        assert_images(kind, &result, model, 1, (width, height), ImageFormat::Jpeg);
    }

    if caps.formats.contains(&ImageFormat::Gif) && caps.gif.is_some() {
        let mut req = one.clone();
        req.size = Some(format!("{GIF_SIDE}x{GIF_SIDE}"));
        req.output_format = Some(ImageFormat::Gif);
        req.frame_count = Some(3);
        let result = edit(req, Events::none()).await;
        assert_images(
            kind,
            &result,
            model,
            1,
            (GIF_SIDE, GIF_SIDE),
            ImageFormat::Gif,
        );
    }

    if caps.takes(Param::Stream) {
        let mut req = one.clone();
        req.partial_images = Some(2);
        let (events, mut rx) = Events::channel();
        let result = edit(req, events).await;
        assert_images(kind, &result, model, 1, (width, height), ImageFormat::Png);
        let mut partials = Vec::new();
        while let Some(event) = rx.recv().await {
            if let ProviderEvent::PartialImage { index, .. } = event {
                partials.push(index);
            }
        }
        assert_eq!(partials, [0, 1], "{kind}: partial edit images in order");
    }
    calls
}

fn source_size(image: &InputImage) -> (u32, u32) {
    let info = probe(&image.bytes).unwrap();
    (info.width, info.height)
}

/// The frame side of the suite's animations: under every model's GIF frame cap.
const GIF_SIDE: u32 = 256;

/// Checks `result` holds `n` images of `format` at the size asked for, read from the bytes
/// themselves: raster and GIF images decode (a GIF has more than one frame), SVGs measure.
fn assert_images(
    kind: &str,
    result: &GenerateResult,
    model: &str,
    n: usize,
    (width, height): (u32, u32),
    format: ImageFormat,
) {
    assert_eq!(result.model, model, "{kind}");
    assert_eq!(result.images.len(), n, "{kind}");
    for img in &result.images {
        assert_eq!(img.format, format, "{kind}");
        assert_eq!(img.mime(), format.mime(), "{kind}");
        assert_eq!(ImageFormat::sniff(&img.bytes), Some(format), "{kind}");
        assert_eq!((img.width, img.height), (width, height), "{kind}");
        let info = probe(&img.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!((info.width, info.height), (width, height), "{kind}");
        assert_eq!(img.frames, info.frames, "{kind}: frames as the bytes say");
        match format {
            ImageFormat::Gif => assert!(info.frames > 1, "{kind}: a GIF of one frame"),
            _ => assert_eq!(info.frames, 1, "{kind}: {format} is still"),
        }
        if format == ImageFormat::Svg {
            let text = std::str::from_utf8(&img.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert!(
                text.trim_end().ends_with("</svg>"),
                "{kind}: a whole SVG document"
            );
            continue;
        }
        let decoded = image::load_from_memory(&img.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            (decoded.width(), decoded.height()),
            (width, height),
            "{kind}"
        );
    }
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

// ---- hostile upstreams ---------------------------------------------------------------------

/// The sentinel key every hostile row checks for.
const SENTINEL_KEY: &str = "sk-SENTINEL-hostile-0123456789abcdef";
/// The sentinel password of the fake upstream's base URL.
const SENTINEL_PASSWORD: &str = "SENTINELPASS";

/// What the hostile rows need to build a provider: where its fake upstream is, and how it
/// should be set up.
struct Upstream {
    /// `http://user:SENTINELPASS@127.0.0.1:PORT/v1`.
    base_url: url::Url,
    /// The one key of its pool.
    key: &'static str,
    /// Its `retry_after_cap`; the rows keep it short so a lock-out shows.
    retry_after_cap: std::time::Duration,
}

/// How one provider's wire format looks to the hostile rows, so any HTTP provider can run them.
struct Wire {
    /// The path a generation is POSTed to.
    route: &'static str,
    /// A successful answer holding one image.
    ok: fn() -> ResponseTemplate,
    /// An error answer of `status` whose field `field` (`message`, `code`, `type`, `param`)
    /// holds `value`.
    error: fn(status: u16, field: &str, value: &str) -> ResponseTemplate,
    /// The model the rows generate with.
    model: &'static str,
}

/// Asserts that no secret of the hostile rows shows in `text`.
fn assert_no_sentinel(text: &str, what: &str) {
    for secret in [SENTINEL_KEY, SENTINEL_PASSWORD, "SENTINEL", "0123456789abc"] {
        assert!(!text.contains(secret), "{what}: `{secret}` leaked: {text}");
    }
}

/// What every HTTP provider must withstand from an upstream that echoes secrets and asks for
/// absurd waits: no secret in any error or result, no panic, a prompt answer, and no key
/// locked out beyond `retry_after_cap`.
async fn hostile_conformance(build: &dyn Fn(Upstream) -> Box<dyn ImageProvider>, wire: &Wire) {
    let server = MockServer::start().await;
    let base_url = format!(
        "http://user:{SENTINEL_PASSWORD}@127.0.0.1:{}/v1",
        server.address().port()
    );
    let cap = std::time::Duration::from_secs(1);
    // A fresh provider (and pool) per row: a 401 row rightly disables its key.
    let fresh = || {
        build(Upstream {
            base_url: base_url.parse().unwrap(),
            key: SENTINEL_KEY,
            retry_after_cap: cap,
        })
    };
    let kind = fresh().kind();
    let request = GenerateRequest::new("hostile: a red circle", wire.model);
    // Key echoes: every error field, every status that rests or disables a key, the request
    // id, a 200 of the wrong shape, and a text body where the key straddles the 200-character cut.
    let echo =
        format!("Incorrect API key provided: {SENTINEL_KEY}; Authorization: Bearer {SENTINEL_KEY}");
    let mut rows: Vec<(String, ResponseTemplate)> = Vec::new();
    for status in [400, 401, 429, 500] {
        for field in ["message", "code", "type", "param"] {
            rows.push((
                format!("{status} {field}"),
                (wire.error)(status, field, &echo),
            ));
        }
    }
    rows.push((
        "x-request-id".into(),
        (wire.error)(400, "message", "no").insert_header("x-request-id", SENTINEL_KEY),
    ));
    rows.push((
        "200 of the wrong shape".into(),
        ResponseTemplate::new(200).set_body_raw(
            format!(r#"{{"data": "Authorization: Bearer {SENTINEL_KEY}"}}"#),
            "application/json",
        ),
    ));
    rows.push((
        "base URL password".into(),
        (wire.error)(400, "message", &format!("from {base_url}")),
    ));
    for pad in [186, 190, 195, 199] {
        rows.push((
            format!("text body, key at {pad}"),
            ResponseTemplate::new(502)
                .set_body_string(format!("{}{SENTINEL_KEY} tail", "e".repeat(pad))),
        ));
    }
    for (what, response) in rows {
        let provider = fresh();
        let (first, _) = answer(&server, wire, &*provider, &request, response).await;
        let err = first.expect_err(&what);
        assert_no_sentinel(&format!("{err} {err:?}"), &format!("{kind}: {what}"));
        // Whatever the row did to the key, it is usable again within the cap.
        let started = std::time::Instant::now();
        let next = provider.generate(&request).await;
        if let Ok(result) = next {
            assert_no_sentinel(
                &format!("{:?} {:?}", result.revised_prompt, result.request_id),
                &what,
            );
        }
        assert!(
            started.elapsed() < cap * 3,
            "{kind}: {what}: the next call hung"
        );
    }

    // Absurd waits: answered at once, and the next call waits out no more than the cap.
    for (header, value) in [
        ("retry-after", "300000000000"),
        ("retry-after", "9223372036854775807"),
        ("retry-after-ms", "18446744073709551615"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        let what = format!("{kind}: {header}: {value}");
        let provider = fresh();
        let response = (wire.error)(429, "message", "slow down").insert_header(header, value);
        let (first, took) = answer(&server, wire, &*provider, &request, response).await;
        let err = first.expect_err(&what);
        assert_eq!(err.kind, ErrorKind::RateLimited, "{what}: {err}");
        assert!(took < cap * 3, "{what}: took {took:?}");
        let started = std::time::Instant::now();
        provider
            .generate(&request)
            .await
            .unwrap_or_else(|e| panic!("{what}: the next call failed: {e}"));
        assert!(started.elapsed() < cap * 3, "{what}: locked out");
    }
}

/// Mounts `response` for the next request and a success after it, then makes one generation.
async fn answer(
    server: &MockServer,
    wire: &Wire,
    provider: &dyn ImageProvider,
    request: &GenerateRequest,
    response: ResponseTemplate,
) -> (
    Result<GenerateResult, imagegen_providers::ProviderError>,
    std::time::Duration,
) {
    server.reset().await;
    Mock::given(method("POST"))
        .and(path(wire.route))
        .respond_with(response)
        .up_to_n_times(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(wire.route))
        .respond_with((wire.ok)())
        .mount(server)
        .await;
    let started = std::time::Instant::now();
    let first = provider.generate(request).await;
    (first, started.elapsed())
}

fn openai_error(status: u16, field: &str, value: &str) -> ResponseTemplate {
    let mut error =
        json!({"message": "bad", "type": "invalid_request_error", "param": null, "code": null});
    error[field] = value.into();
    ResponseTemplate::new(status).set_body_json(json!({ "error": error }))
}

fn openai_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "data": [{"b64_json": encoded(8, 8, 0, image::ImageFormat::Png), "revised_prompt": "fine"}]
    }))
}

#[tokio::test]
async fn openai_provider_withstands_a_hostile_upstream() {
    let wire = Wire {
        route: "/v1/images/generations",
        ok: openai_ok,
        error: openai_error,
        model: "gpt-image-2.6-flare",
    };
    let build = |upstream: Upstream| -> Box<dyn ImageProvider> {
        let mut s = OpenAiSettings::new(upstream.base_url, Some(upstream.key.into()));
        s.max_retries = 0;
        s.retry_after_cap = upstream.retry_after_cap;
        Box::new(OpenAiProvider::new(s, reqwest::Client::new()))
    };
    hostile_conformance(&build, &wire).await;
}
