//! The OpenAI provider against a fake upstream: request bodies, results, every error row of
//! the API reference, retries, downloads and secrets; edits and variations as multipart uploads.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::common::{Form, MultipartForm};
use imagegen_providers::{
    keys::KeyPool,
    openai::{OpenAiProvider, OpenAiSettings},
    EditRequest, ErrorKind, Events, GenerateRequest, ImageFormat, ImageProvider, ImageProviderExt,
    InputImage, ProviderError, ProviderEvent, SvgOptions, SvgReasoning, UpstreamModel,
    VariationRequest,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedReceiver;
use wiremock::{
    matchers::{body_partial_json, header, method, path},
    Mock, MockServer, Request, ResponseTemplate,
};

const KEY: &str = "sk-SENTINEL-abcdef0123456789";
const GENERATIONS: &str = "/v1/images/generations";

fn png(width: u32, height: u32) -> Vec<u8> {
    imagegen_testkit::img::png_rgba(width, height, [200, 40, 90, 255])
}

use imagegen_testkit::img::b64;

fn settings(server: &MockServer) -> OpenAiSettings {
    let base = format!("{}/v1", server.uri()).parse().unwrap();
    let mut s = OpenAiSettings::new(base, Some(SecretString::from(KEY)));
    s.max_retries = 2;
    s
}

fn provider(settings: OpenAiSettings) -> OpenAiProvider {
    OpenAiProvider::new(settings, reqwest::Client::new())
}

fn ok_b64(images: &[&[u8]]) -> ResponseTemplate {
    let data: Vec<Value> = images.iter().map(|b| json!({"b64_json": b64(b)})).collect();
    ResponseTemplate::new(200).set_body_json(json!({"created": 1, "data": data}))
}

fn ok_urls(urls: &[&str]) -> ResponseTemplate {
    let data: Vec<Value> = urls
        .iter()
        .map(|u| json!({"url": u, "b64_json": null}))
        .collect();
    ResponseTemplate::new(200).set_body_json(json!({"created": 1, "data": data}))
}

async fn mount(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn mount_once(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(response)
        .up_to_n_times(1)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

async fn generations(server: &MockServer) -> usize {
    requests(server)
        .await
        .iter()
        .filter(|r| r.url.path() == GENERATIONS)
        .count()
}

fn request(model: &str) -> GenerateRequest {
    GenerateRequest::new("a lighthouse at dusk", model)
}

// ---- results ------------------------------------------------------------------------------

#[tokio::test]
async fn b64_result_is_decoded_with_usage_and_request_id() {
    let server = MockServer::start().await;
    let image = png(64, 48);
    // Line breaks inside the base64, as some servers wrap it.
    let wrapped = b64(&image)
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let body = json!({
        "created": 1795537142,
        "data": [{"b64_json": wrapped, "url": null, "revised_prompt": null}],
        "background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024",
        "some_future_field": {"x": 1},
        "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                  "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}
    });
    mount(
        &server,
        ResponseTemplate::new(200)
            .set_body_json(body)
            .insert_header("x-request-id", "req_abc123"),
    )
    .await;
    let result = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    let img = &result.images[0];
    assert_eq!(&img.bytes[..], &image[..]);
    assert_eq!(
        (img.format, img.width, img.height),
        (ImageFormat::Png, 64, 48)
    );
    assert_eq!(img.mime(), "image/png");
    // Hashed while it arrived, so storage need not read it again.
    assert_eq!(img.sha256, Some(Sha256::digest(&image).into()));
    let usage = result.usage.unwrap();
    assert_eq!(usage.input_tokens, Some(50));
    assert_eq!(usage.output_tokens, Some(4160));
    assert_eq!(usage.total_tokens, Some(4210));
    assert_eq!(usage.details["input_tokens_details"]["text_tokens"], 50);
    assert_eq!(result.request_id.as_deref(), Some("req_abc123"));
    assert_eq!(result.model, "gpt-image-2.6-flare");
    assert_eq!(result.revised_prompt, None);
}

#[tokio::test]
async fn several_images_keep_their_order() {
    let server = MockServer::start().await;
    let (a, b) = (png(16, 16), png(32, 16));
    mount(&server, ok_b64(&[&a, &b])).await;
    let mut req = request("gpt-image-2.6-flare");
    req.options.n = Some(2);
    let result = provider(settings(&server)).generate(&req).await.unwrap();
    let sizes: Vec<_> = result.images.iter().map(|i| (i.width, i.height)).collect();
    assert_eq!(sizes, vec![(16, 16), (32, 16)]);
    assert_eq!(result.images[1].bytes, b);
    assert_eq!(result.images[1].sha256, Some(Sha256::digest(&b).into()));
    let sent: Value = requests(&server).await[0].body_json().unwrap();
    assert_eq!(sent["n"], 2);
}

#[tokio::test]
async fn a_ratio_and_resolution_go_out_as_the_nearest_size_and_the_result_says_so() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(16, 9)])).await;
    let mut req = request("gpt-image-2");
    req.options.aspect_ratio = Some("16:9".into());
    req.options.resolution = Some(imagegen_providers::Resolution::FourK);
    let result = provider(settings(&server)).generate(&req).await.unwrap();
    let wire: Value = requests(&server).await[0].body_json().unwrap();
    assert_eq!(wire["size"], "3840x2160");
    assert!(wire.get("aspect_ratio").is_none() && wire.get("resolution").is_none());
    assert_eq!(result.sent["size"], "3840x2160");
    assert_eq!(result.sent["model"], "gpt-image-2");
    assert!(!result.sent.contains_key("prompt"));
}

#[tokio::test]
async fn escaped_slashes_in_base64_are_read_as_plain_ones() {
    let server = MockServer::start().await;
    // Enough pixels that the base64 holds slashes, escaped as PHP's json_encode does.
    let image = png(256, 256);
    let escaped = b64(&image).replace('/', "\\/");
    assert!(escaped.contains("\\/"));
    let body = format!(r#"{{"created":1,"data":[{{"b64_json":"{escaped}"}}]}}"#);
    mount(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;
    let result = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(result.images[0].bytes, image);
}

#[tokio::test]
async fn url_result_on_the_base_host_is_downloaded() {
    let server = MockServer::start().await;
    let image = png(20, 10);
    let url = format!("{}/files/img-1.png?sig=secret", server.uri());
    mount(&server, ok_urls(&[&url])).await;
    Mock::given(method("GET"))
        .and(path("/files/img-1.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.clone(), "image/png"))
        .mount(&server)
        .await;
    let result = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(&result.images[0].bytes[..], &image[..]);
    let get = requests(&server)
        .await
        .into_iter()
        .find(|r| r.method.as_str() == "GET")
        .unwrap();
    assert!(
        get.headers.get("authorization").is_none(),
        "the key is not sent to downloads"
    );
}

#[tokio::test]
async fn relative_url_result_is_resolved_against_the_base_url() {
    let server = MockServer::start().await;
    let image = png(8, 8);
    mount(&server, ok_urls(&["/generated/a.png"])).await;
    Mock::given(method("GET"))
        .and(path("/generated/a.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.clone(), "image/png"))
        .mount(&server)
        .await;
    let result = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(&result.images[0].bytes[..], &image[..]);
}

/// The same server reached as `localhost`, a host different from the base URL's `127.0.0.1`.
fn other_host(server: &MockServer, path: &str) -> String {
    format!("http://localhost:{}{path}", server.address().port())
}

#[tokio::test]
async fn url_result_on_another_host_is_refused_naming_it() {
    let server = MockServer::start().await;
    let files = MockServer::start().await;
    mount(&server, ok_urls(&[&other_host(&files, "/img.png")])).await;
    let err = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(err.message.contains("`localhost`"), "{err}");
    assert!(err.message.contains("download_hosts"), "{err}");
    assert!(requests(&files).await.is_empty(), "nothing was fetched");
}

#[tokio::test]
async fn download_hosts_allow_another_host_case_insensitively() {
    let server = MockServer::start().await;
    let files = MockServer::start().await;
    let image = png(12, 12);
    mount(&server, ok_urls(&[&other_host(&files, "/img.png")])).await;
    Mock::given(method("GET"))
        .and(path("/img.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.clone(), "image/png"))
        .mount(&files)
        .await;
    let mut s = settings(&server);
    // A bare host would mean ports 80 and 443 only; the fake file server listens elsewhere.
    s.download_hosts = vec![format!("LocalHost:{}", files.address().port())];
    let result = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(&result.images[0].bytes[..], &image[..]);
}

#[tokio::test]
async fn redirects_are_followed_only_within_allowed_hosts() {
    let server = MockServer::start().await;
    let files = MockServer::start().await;
    let image = png(10, 10);
    Mock::given(method("GET"))
        .and(path("/ok.png"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/real.png"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/real.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.clone(), "image/png"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/escape.png"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", other_host(&files, "/x.png")),
        )
        .mount(&server)
        .await;
    let p = provider(settings(&server));

    mount_once(&server, ok_urls(&[&format!("{}/ok.png", server.uri())])).await;
    let result = p.generate(&request("gpt-image-2.6-flare")).await.unwrap();
    assert_eq!(&result.images[0].bytes[..], &image[..]);

    mount_once(&server, ok_urls(&[&format!("{}/escape.png", server.uri())])).await;
    let err = p
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(err.message.contains("`localhost`"), "{err}");
    assert!(err.message.contains("download_hosts"), "{err}");
    assert!(
        requests(&files).await.is_empty(),
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn oversize_bodies_are_refused() {
    let server = MockServer::start().await;
    let mut noisy = image::RgbaImage::new(256, 256);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for p in noisy.pixels_mut() {
        // xorshift noise: incompressible, so the PNG stays large.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let [r, g, b, ..] = x.to_le_bytes();
        *p = image::Rgba([r, g, b, 255]);
    }
    let mut large = std::io::Cursor::new(Vec::new());
    noisy.write_to(&mut large, image::ImageFormat::Png).unwrap();
    let large = large.into_inner();
    assert!(large.len() > 20_000, "{}", large.len());

    let mut s = settings(&server);
    s.max_response_bytes = 20_000;
    let p = provider(s);

    mount_once(&server, ok_b64(&[&large])).await;
    let err = p
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(
        err.message.contains("response is larger than 20000 bytes"),
        "{err}"
    );

    Mock::given(method("GET"))
        .and(path("/big.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(large, "image/png"))
        .mount(&server)
        .await;
    mount_once(&server, ok_urls(&[&format!("{}/big.png", server.uri())])).await;
    let err = p
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(
        err.message.contains("image 1 is larger than 20000 bytes"),
        "{err}"
    );
    assert!(!err.retryable);
}

#[tokio::test]
async fn data_url_result_is_decoded_inline() {
    let server = MockServer::start().await;
    let image = png(9, 7);
    let url = format!("data:image/png;base64,{}", b64(&image));
    mount(&server, ok_urls(&[&url])).await;
    let result = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(&result.images[0].bytes[..], &image[..]);
    assert_eq!(
        generations(&server).await,
        requests(&server).await.len(),
        "no download"
    );
}

#[tokio::test]
async fn expired_download_says_urls_expire() {
    let server = MockServer::start().await;
    mount(&server, ok_urls(&[&format!("{}/gone.png", server.uri())])).await;
    Mock::given(method("GET"))
        .and(path("/gone.png"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&server)
        .await;
    let err = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert_eq!(err.status, Some(403));
    assert!(err.message.contains("HTTP 403"), "{err}");
    assert!(err.message.contains("60 minutes"), "{err}");
}

#[tokio::test]
async fn unusable_results_are_bad_responses() {
    let cases = [
        (
            "missing data",
            ResponseTemplate::new(200).set_body_json(json!({"created": 1})),
            "no `data`",
        ),
        (
            "empty data",
            ResponseTemplate::new(200).set_body_json(json!({"data": []})),
            "empty",
        ),
        (
            "non-JSON 200",
            ResponseTemplate::new(200).set_body_raw("<html>hello</html>", "text/html"),
            "not the expected JSON",
        ),
        (
            "neither field",
            ResponseTemplate::new(200).set_body_json(json!({"data": [{"revised_prompt": "x"}]})),
            "neither `b64_json` nor `url`",
        ),
        (
            "bad base64",
            ResponseTemplate::new(200).set_body_json(json!({"data": [{"b64_json": "@@@"}]})),
            "not valid base64",
        ),
        (
            "not an image",
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": [{"b64_json": b64(b"hello")}]})),
            "not a usable image",
        ),
    ];
    let server = MockServer::start().await;
    let p = provider(settings(&server));
    for (name, response, expected) in cases {
        server.reset().await;
        mount(&server, response.insert_header("x-request-id", "req_bad")).await;
        let err = p
            .generate(&request("gpt-image-2.6-flare"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{name}: {err}");
        assert!(!err.retryable, "{name}");
        assert!(err.message.contains(expected), "{name}: {err}");
        assert_eq!(err.request_id.as_deref(), Some("req_bad"), "{name}");
        assert_eq!(generations(&server).await, 1, "{name}: not retried");
    }
}

/// An animated GIF of `frames` frames of `width`x`height`, written by hand because the `image`
/// crate is built without GIF support: its LZW data clears before every pixel, so the code
/// width stays at 3 bits and no table is needed.
fn gif(width: u16, height: u16, frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(width.to_le_bytes());
    out.extend(height.to_le_bytes());
    // A global table of 4 colours, 8 bits per primary.
    out.extend([0xF1, 0, 0]);
    out.extend([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
    out.extend(b"\x21\xFF\x0BNETSCAPE2.0\x03\x01\x00\x00\x00");
    let (clear, end) = (4u32, 5u32);
    for frame in 0..frames {
        // Graphic control: 100 ms per frame.
        out.extend([0x21, 0xF9, 0x04, 0x00, 10, 0, 0, 0]);
        out.push(0x2C);
        out.extend([0, 0, 0, 0]);
        out.extend(width.to_le_bytes());
        out.extend(height.to_le_bytes());
        out.push(0);
        out.push(2); // LZW minimum code size
        let pixels = usize::from(width) * usize::from(height);
        let colour = (frame % 4) as u32;
        let codes = (0..pixels).flat_map(|_| [clear, colour]).chain([end]);
        let (mut bits, mut held, mut data) = (0u32, 0, Vec::new());
        for code in codes {
            bits |= code << held;
            held += 3;
            while held >= 8 {
                data.push(bits as u8);
                bits >>= 8;
                held -= 8;
            }
        }
        if held > 0 {
            data.push(bits as u8);
        }
        for block in data.chunks(255) {
            out.push(block.len() as u8);
            out.extend(block);
        }
        out.push(0);
    }
    out.push(0x3B);
    out
}

const SVG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
                   width=\"64\" height=\"48\" viewBox=\"0 0 64 48\"><rect width=\"64\" height=\"48\" \
                   fill=\"#c82\"/></svg>";

/// An answer holding `bytes` while claiming `output_format = claimed`.
fn ok_claiming(bytes: &[u8], claimed: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "created": 1, "output_format": claimed, "data": [{"b64_json": b64(bytes)}]
    }))
}

#[tokio::test]
async fn the_format_is_read_from_the_bytes_not_the_echoed_output_format() {
    let server = MockServer::start().await;
    let image = png(12, 10);
    mount(&server, ok_claiming(&image, "gif")).await;
    let mut req = request("gpt-image-2.6-flare");
    req.options.output_format = Some(ImageFormat::Gif);
    let result = provider(settings(&server)).generate(&req).await.unwrap();
    let img = &result.images[0];
    assert_eq!(
        (img.format, img.width, img.height, img.frames),
        (ImageFormat::Png, 12, 10, 1)
    );
}

#[tokio::test]
async fn a_gif_answer_arrives_as_base64_and_is_sniffed_as_gif() {
    let server = MockServer::start().await;
    let animation = gif(8, 6, 3);
    mount(&server, ok_claiming(&animation, "png")).await;
    let mut req = request("gpt-image-2.6-flare");
    req.options.output_format = Some(ImageFormat::Gif);
    req.options.frame_count = Some(3);
    let result = provider(settings(&server)).generate(&req).await.unwrap();
    let img = &result.images[0];
    assert_eq!(&img.bytes[..], &animation[..]);
    assert_eq!((img.format, img.mime()), (ImageFormat::Gif, "image/gif"));
    assert_eq!((img.width, img.height, img.frames), (8, 6, 3));
    assert_eq!(img.sha256, Some(Sha256::digest(&animation).into()));
}

#[tokio::test]
async fn an_svg_answer_arrives_as_base64_and_is_sniffed_as_svg() {
    let server = MockServer::start().await;
    mount(&server, ok_claiming(SVG.as_bytes(), "png")).await;
    let mut req = request("gpt-image-2.6-sunburst");
    req.options.output_format = Some(ImageFormat::Svg);
    req.options.svg = Some(svg_options(Some("low")));
    let result = provider(settings(&server)).generate(&req).await.unwrap();
    let img = &result.images[0];
    assert_eq!(&img.bytes[..], SVG.as_bytes());
    assert_eq!(
        (img.format, img.mime()),
        (ImageFormat::Svg, "image/svg+xml")
    );
    assert_eq!((img.width, img.height), (64, 48));
}

// ---- request bodies and headers -----------------------------------------------------------

#[tokio::test]
async fn gpt_image_body_has_only_what_the_model_takes() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let p = provider(settings(&server));
    p.generate(&request("gpt-image-2.6-flare")).await.unwrap();

    let mut full = request("gpt-image-2.6-flare");
    full.options.size = Some("1536x1024".into());
    full.options.quality = Some("high".into());
    full.options.output_format = Some(ImageFormat::Webp);
    full.options.output_compression = Some(80);
    full.options.background = Some("transparent".into());
    full.options.moderation = Some("low".into());
    full.options.style = Some("vivid".into()); // not a GPT parameter: the guard drops it
    full.options.seed = Some(7); // likewise
    full.options
        .extra
        .get_or_insert_with(Default::default)
        .insert("partial_images".into(), json!(0));
    full.options
        .extra
        .get_or_insert_with(Default::default)
        .insert("model".into(), json!("hijack"));
    full.options
        .extra
        .get_or_insert_with(Default::default)
        .insert("prompt".into(), json!("hijack"));
    p.generate(&full).await.unwrap();

    let sent: Vec<Value> = requests(&server)
        .await
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect();
    assert_eq!(
        sent[0],
        json!({"model": "gpt-image-2.6-flare", "prompt": "a lighthouse at dusk", "n": 1})
    );
    assert_eq!(
        sent[1],
        json!({
            "model": "gpt-image-2.6-flare", "prompt": "a lighthouse at dusk", "n": 1,
            "size": "1536x1024", "quality": "high", "output_format": "webp",
            "output_compression": 80, "background": "transparent", "moderation": "low",
            "partial_images": 0
        })
    );
}

#[tokio::test]
async fn partial_images_ask_for_a_stream_and_a_plain_json_answer_still_works() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let p = provider(settings(&server));
    let mut streamed = request("gpt-image-2.6-flare");
    streamed.options.partial_images = Some(1);
    // Compatible servers may ignore `stream`; the content type of the answer decides.
    let result = p.generate(&streamed).await.unwrap();
    assert_eq!(result.images.len(), 1);
    let mut dall_e = request("dall-e-3");
    dall_e.options.partial_images = Some(1);
    p.generate(&dall_e).await.unwrap();
    let sent: Vec<Value> = requests(&server)
        .await
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect();
    assert_eq!(
        (&sent[0]["stream"], &sent[0]["partial_images"]),
        (&json!(true), &json!(1))
    );
    assert!(sent[1].get("stream").is_none() && sent[1].get("partial_images").is_none());
}

#[tokio::test]
async fn dall_e_3_body_asks_for_b64_and_never_moderation() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({
            "created": 1,
            "data": [{"b64_json": b64(&png(4, 4)), "revised_prompt": "A tall lighthouse at dusk."}]
        })),
    )
    .await;
    let mut req = request("dall-e-3");
    req.options.size = Some("1024x1792".into());
    req.options.quality = Some("hd".into());
    req.options.style = Some("natural".into());
    req.options.moderation = Some("low".into());
    req.options.output_format = Some(ImageFormat::Png);
    let result = provider(settings(&server)).generate(&req).await.unwrap();
    assert_eq!(
        result.revised_prompt.as_deref(),
        Some("A tall lighthouse at dusk.")
    );
    assert!(result.usage.is_none());
    let sent: Value = requests(&server).await[0].body_json().unwrap();
    assert_eq!(
        sent,
        json!({
            "model": "dall-e-3", "prompt": "a lighthouse at dusk", "n": 1,
            "size": "1024x1792", "quality": "hd", "style": "natural",
            "response_format": "b64_json"
        })
    );
}

#[tokio::test]
async fn headers_carry_key_organization_and_project() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let mut s = settings(&server);
    s.organization = Some("org-123".into());
    s.project = Some("proj_456".into());
    provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    let req = &requests(&server).await[0];
    let header = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("authorization"), Some(format!("Bearer {KEY}")));
    assert_eq!(header("openai-organization").as_deref(), Some("org-123"));
    assert_eq!(header("openai-project").as_deref(), Some("proj_456"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
}

#[tokio::test]
async fn no_key_means_no_authorization_header() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let mut s = settings(&server);
    s.keys = std::sync::Arc::new(imagegen_providers::keys::KeyPool::empty());
    provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    let req = &requests(&server).await[0];
    assert!(req.headers.get("authorization").is_none());
    assert!(req.headers.get("openai-organization").is_none());
    assert!(req.headers.get("openai-project").is_none());
}

#[tokio::test]
async fn base_url_with_a_trailing_slash_reaches_the_same_route() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let mut s = settings(&server);
    s.base_url = format!("{}/v1/", server.uri()).parse().unwrap();
    provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(generations(&server).await, 1);
}

async fn sent_bodies(server: &MockServer) -> Vec<Value> {
    requests(server)
        .await
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect()
}

#[tokio::test]
async fn the_default_request_names_gpt_image_2_6_flare() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let s = OpenAiSettings::new(format!("{}/v1", server.uri()).parse().unwrap(), None);
    let p = provider(s);
    assert_eq!(p.default_model(), "gpt-image-2.6-flare");
    let result = p.generate(&request(p.default_model())).await.unwrap();
    assert_eq!(result.model, "gpt-image-2.6-flare");
    assert_eq!(
        sent_bodies(&server).await[0],
        json!({"model": "gpt-image-2.6-flare", "prompt": "a lighthouse at dusk", "n": 1})
    );
}

#[tokio::test]
async fn complexity_goes_to_gpt_image_2_6_only() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let p = provider(settings(&server));
    let models = [
        "gpt-image-2.6-flare",
        "gpt-image-2.6-sunburst",
        "gpt-image-2.5-flare",
        "gpt-image-2",
    ];
    for model in models {
        let mut req = request(model);
        req.options.complexity = Some("low".into());
        p.generate(&req).await.unwrap();
    }
    let sent: Vec<Option<Value>> = sent_bodies(&server)
        .await
        .iter()
        .map(|b| b.get("complexity").cloned())
        .collect();
    // 2.5 and 2 would answer `unknown_parameter`: the guard keeps it off the wire.
    assert_eq!(sent, [Some(json!("low")), Some(json!("low")), None, None]);
}

#[tokio::test]
async fn gif_fields_go_only_with_gif_and_a_gif_never_streams() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let p = provider(settings(&server));
    let animated = |model: &str, format: ImageFormat| {
        let mut req = request(model);
        req.options.output_format = Some(format);
        req.options.frame_count = Some(4);
        req.options.frame_duration_ms = Some(120);
        req.options.partial_images = Some(2);
        req
    };
    p.generate(&animated("gpt-image-2.6-flare", ImageFormat::Gif))
        .await
        .unwrap();
    p.generate(&animated("gpt-image-2.6-flare", ImageFormat::Png))
        .await
        .unwrap();
    p.generate(&animated("gpt-image-2.5-flare", ImageFormat::Png))
        .await
        .unwrap();
    let sent = sent_bodies(&server).await;
    assert_eq!(
        sent[0],
        json!({
            "model": "gpt-image-2.6-flare", "prompt": "a lighthouse at dusk", "n": 1,
            "output_format": "gif", "frame_count": 4, "frame_duration_ms": 120
        })
    );
    assert_eq!(
        sent[1],
        json!({
            "model": "gpt-image-2.6-flare", "prompt": "a lighthouse at dusk", "n": 1,
            "output_format": "png", "stream": true, "partial_images": 2
        })
    );
    assert_eq!(
        sent[2],
        json!({
            "model": "gpt-image-2.5-flare", "prompt": "a lighthouse at dusk", "n": 1,
            "output_format": "png", "stream": true, "partial_images": 2
        })
    );
}

fn svg_options(effort: Option<&str>) -> SvgOptions {
    SvgOptions {
        model: Some("gpt-5.5-mini".into()),
        reasoning: Some(SvgReasoning {
            effort: effort.map(String::from),
        }),
    }
}

#[tokio::test]
async fn svg_options_go_nested_and_only_with_svg() {
    let server = MockServer::start().await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let p = provider(settings(&server));
    let cases = [
        ("gpt-image-2.6-sunburst", ImageFormat::Svg, Some("high")),
        ("gpt-image-2.6-sunburst", ImageFormat::Svg, None),
        ("gpt-image-2.6-sunburst", ImageFormat::Png, Some("high")),
        ("gpt-image-2.5-sunburst", ImageFormat::Svg, Some("high")),
    ];
    for (model, format, effort) in cases {
        let mut req = request(model);
        req.options.output_format = Some(format);
        req.options.svg = Some(svg_options(effort));
        p.generate(&req).await.unwrap();
    }
    let sent: Vec<Option<Value>> = sent_bodies(&server)
        .await
        .iter()
        .map(|b| b.get("svg").cloned())
        .collect();
    assert_eq!(
        sent,
        [
            Some(json!({"model": "gpt-5.5-mini", "reasoning": {"effort": "high"}})),
            Some(json!({"model": "gpt-5.5-mini"})),
            None,
            None,
        ]
    );
}

// ---- errors -------------------------------------------------------------------------------

struct Row {
    name: &'static str,
    status: u16,
    body: ResponseTemplate,
    kind: ErrorKind,
    retryable: bool,
    code: Option<&'static str>,
}

fn json_error(
    status: u16,
    message: Option<&str>,
    kind: &str,
    code: Option<&str>,
) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

fn row(
    name: &'static str,
    status: u16,
    body: ResponseTemplate,
    kind: ErrorKind,
    retryable: bool,
    code: Option<&'static str>,
) -> Row {
    Row {
        name,
        status,
        body,
        kind,
        retryable,
        code,
    }
}

#[tokio::test]
async fn every_error_row_maps_to_its_kind() {
    use ErrorKind::*;
    let ire = "invalid_request_error";
    let rows = vec![
        row("bad key", 401, json_error(401, Some("Incorrect API key provided: sk-SENT***6789."), ire, Some("invalid_api_key")), Auth, false, Some("invalid_api_key")),
        row("no access", 403, json_error(403, Some("Country, region, or territory not supported"), "request_forbidden", Some("unsupported_country_region_territory")), Permission, false, Some("unsupported_country_region_territory")),
        row("unknown model", 404, json_error(404, Some("The model `gpt-image-9` does not exist"), ire, Some("model_not_found")), NotFound, false, Some("model_not_found")),
        row("bad size", 400, json_error(400, Some("Invalid size"), ire, Some("invalid_size")), InvalidRequest, false, Some("invalid_size")),
        row("bad value", 400, json_error(400, Some("Invalid value"), ire, Some("invalid_value")), InvalidRequest, false, Some("invalid_value")),
        row("unknown parameter", 400, json_error(400, Some("Unknown parameter: 'response_format'."), ire, Some("unknown_parameter")), InvalidRequest, false, Some("unknown_parameter")),
        row("safety, GPT", 400, ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error", "param": null, "code": "moderation_blocked", "moderation_details": {"categories": ["x"]}}})), ContentPolicy, false, Some("moderation_blocked")),
        row("safety, GPT, type only", 400, json_error(400, None, "image_generation_user_error", None), ContentPolicy, false, Some("image_generation_user_error")),
        row("safety, DALL-E", 400, json_error(400, Some("Your request was rejected as a result of our safety system."), ire, Some("content_policy_violation")), ContentPolicy, false, Some("content_policy_violation")),
        row("billing limit", 400, json_error(400, Some("Billing hard limit has been reached"), "billing_hard_limit_reached", None), QuotaExhausted, false, Some("billing_hard_limit_reached")),
        row("billing limit as code", 400, json_error(400, Some("Billing hard limit has been reached"), ire, Some("billing_hard_limit_reached")), QuotaExhausted, false, Some("billing_hard_limit_reached")),
        row("unprocessable", 422, json_error(422, Some("n too large"), ire, None), InvalidRequest, false, Some(ire)),
        row("request timeout", 408, json_error(408, Some("timeout"), "server_error", None), Timeout, true, Some("server_error")),
        row("conflict", 409, json_error(409, Some("conflict"), "server_error", None), UpstreamUnavailable, true, Some("server_error")),
        row("rate limit", 429, json_error(429, Some("Rate limit reached for images per minute"), "requests", Some("rate_limit_exceeded")).insert_header("retry-after", "20"), RateLimited, true, Some("rate_limit_exceeded")),
        row("quota", 429, json_error(429, Some("You exceeded your current quota"), "insufficient_quota", Some("insufficient_quota")), QuotaExhausted, false, Some("insufficient_quota")),
        row("edge rate limit", 429, ResponseTemplate::new(429).set_body_string("error code: 1015").insert_header("retry-after", "3600"), RateLimited, true, None),
        row("server error", 500, json_error(500, Some("The server had an error"), "server_error", None), UpstreamUnavailable, true, Some("server_error")),
        row("null message and code", 500, json_error(500, None, "server_error", None), UpstreamUnavailable, true, Some("server_error")),
        row("HTML 502", 502, ResponseTemplate::new(502).set_body_raw("<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>", "text/html"), UpstreamUnavailable, true, None),
        row("plain 503", 503, ResponseTemplate::new(503).set_body_string("upstream connect error or disconnect/reset before headers"), UpstreamUnavailable, true, None),
        row("empty 504", 504, ResponseTemplate::new(504), UpstreamUnavailable, true, None),
        row("teapot", 418, ResponseTemplate::new(418).set_body_string("I'm a teapot"), BadResponse, false, None),
        row("x-should-retry true on 400", 400, json_error(400, Some("try again"), ire, None).insert_header("x-should-retry", "true"), InvalidRequest, true, Some(ire)),
        row("x-should-retry false on 503", 503, json_error(503, Some("down"), "server_error", None).insert_header("x-should-retry", "false"), UpstreamUnavailable, false, Some("server_error")),
    ];
    let server = MockServer::start().await;
    for (i, r) in rows.into_iter().enumerate() {
        server.reset().await;
        // A fresh key pool per row: a 401 disables the key and a 429 rests it.
        let mut s = settings(&server);
        s.max_retries = 0;
        let p = provider(s);
        let id = format!("req_{i}");
        mount(&server, r.body.insert_header("x-request-id", id.as_str())).await;
        let err = p
            .generate(&request("gpt-image-2.6-flare"))
            .await
            .unwrap_err();
        let name = r.name;
        assert_eq!(err.kind, r.kind, "{name}: {err}");
        assert_eq!(err.retryable, r.retryable, "{name}: {err}");
        assert_eq!(err.status, Some(r.status), "{name}");
        assert_eq!(err.provider_code.as_deref(), r.code, "{name}");
        assert_eq!(err.request_id.as_deref(), Some(id.as_str()), "{name}");
        assert!(!err.message.is_empty(), "{name}");
        assert!(!err.to_string().contains(KEY), "{name}");
        assert_eq!(err.model_unavailable, name == "unknown model", "{name}");
    }
}

#[tokio::test]
async fn error_details_are_kept() {
    let server = MockServer::start().await;
    let p = || {
        let mut s = settings(&server);
        s.max_retries = 0;
        provider(s)
    };

    mount_once(
        &server,
        ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Invalid size '999x999'.", "type": "invalid_request_error",
            "param": "size", "code": "invalid_size"}})),
    )
    .await;
    let err = p()
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("size"));
    assert_eq!(
        err.provider_message.as_deref(),
        Some("Invalid size '999x999'.")
    );
    assert!(err.message.contains("Invalid size '999x999'."), "{err}");

    mount_once(
        &server,
        ResponseTemplate::new(502).set_body_raw("<!DOCTYPE html>\n<html>oops</html>", "text/html"),
    )
    .await;
    let err = p()
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(
        err.provider_message.as_deref(),
        Some("HTTP 502 with an HTML body")
    );

    mount_once(
        &server,
        ResponseTemplate::new(429)
            .set_body_string("error code:\n\n   1015")
            .insert_header("retry-after", "3600"),
    )
    .await;
    let err = p()
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.provider_message.as_deref(), Some("error code: 1015"));
    assert_eq!(err.retry_after, Some(Duration::from_secs(3600)));

    mount_once(
        &server,
        ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "Your request was rejected by the safety system.",
            "type": "image_generation_user_error", "code": "moderation_blocked"}})),
    )
    .await;
    let err = p()
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert!(err.message.contains("safety system"), "{err}");
    assert!(err.message.contains("rephrase"), "{err}");
}

fn sentinel_settings(server: &MockServer) -> OpenAiSettings {
    let mut s = settings(server);
    s.max_retries = 0;
    s
}

#[tokio::test]
async fn retired_models_are_marked_and_keep_their_kind() {
    let server = MockServer::start().await;
    let ire = "invalid_request_error";
    let cases = [
        (
            json_error(404, Some("The model `gpt-image-1.5` does not exist or you do not have access to it."), ire, Some("model_not_found")),
            ErrorKind::NotFound,
            true,
        ),
        (
            json_error(400, Some("The model `gpt-image-1.5` has been deprecated, see https://platform.openai.com/docs/deprecations"), ire, None),
            ErrorKind::InvalidRequest,
            true,
        ),
        (
            json_error(400, Some("gpt-image-1.5 was SHUT DOWN on 2026-12-01."), ire, Some("invalid_value")),
            ErrorKind::InvalidRequest,
            true,
        ),
        // 410 keeps its classification; only the mark is new.
        (
            json_error(410, Some("gpt-image-1.5 is no longer available"), ire, None),
            ErrorKind::BadResponse,
            true,
        ),
        (
            json_error(400, Some("Invalid size '999x999'."), ire, Some("invalid_size")),
            ErrorKind::InvalidRequest,
            false,
        ),
        (
            json_error(403, Some("Your organization must be verified to use the model `gpt-image-1.5`"), ire, None),
            ErrorKind::Permission,
            false,
        ),
        (
            json_error(429, Some("Rate limit reached for gpt-image-1.5"), "requests", Some("rate_limit_exceeded")),
            ErrorKind::RateLimited,
            false,
        ),
    ];
    for (i, (body, kind, unavailable)) in cases.into_iter().enumerate() {
        server.reset().await;
        mount(&server, body).await;
        let err = provider(sentinel_settings(&server))
            .generate(&request("gpt-image-1.5"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, kind, "case {i}: {err}");
        assert_eq!(err.model_unavailable, unavailable, "case {i}: {err}");
        if unavailable {
            assert!(!err.retryable, "case {i}: {err}");
            assert_eq!(generations(&server).await, 1, "case {i}");
        }
    }
}

#[tokio::test]
async fn a_streamed_model_not_found_is_marked_and_not_retried() {
    let server = MockServer::start().await;
    let body = [
        sse(
            "image_generation.partial_image",
            json!({"b64_json": b64(&png(4, 4)), "partial_image_index": 0}),
        ),
        sse(
            "error",
            json!({"error": {"code": "model_not_found", "message": "The model `gpt-image-1.5` does not exist"}}),
        ),
    ]
    .concat();
    mount(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"),
    )
    .await;
    let mut req = request("gpt-image-1.5");
    req.options.partial_images = Some(1);
    let err = provider(settings(&server))
        .generate(&req)
        .await
        .unwrap_err();
    assert!(err.model_unavailable, "{err}");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(!err.retryable);
    assert_eq!(err.provider_code.as_deref(), Some("model_not_found"));
    assert!(err.message.contains("does not exist"), "{err}");
    assert_eq!(generations(&server).await, 1);
}

// ---- retries ------------------------------------------------------------------------------

fn server_error(status: u16) -> ResponseTemplate {
    json_error(
        status,
        Some("The server had an error"),
        "server_error",
        None,
    )
    .insert_header("retry-after-ms", "10")
}

#[tokio::test]
async fn a_500_then_200_succeeds_after_two_requests() {
    let server = MockServer::start().await;
    mount_once(&server, server_error(500)).await;
    mount(
        &server,
        ok_b64(&[&png(4, 4)]).insert_header("x-request-id", "req_ok"),
    )
    .await;
    let result = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(generations(&server).await, 2);
    assert_eq!(result.request_id.as_deref(), Some("req_ok"));
}

#[tokio::test]
async fn three_503s_give_up_after_three_requests() {
    let server = MockServer::start().await;
    mount(&server, server_error(503)).await;
    let err = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(generations(&server).await, 3);
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
    assert!(err.retryable);
    assert_eq!(err.attempts, 3);
    assert!(err.message.contains("after 2 retries"), "{err}");
}

#[tokio::test]
async fn retry_after_seconds_is_waited_for() {
    let server = MockServer::start().await;
    mount_once(
        &server,
        json_error(
            429,
            Some("slow down"),
            "requests",
            Some("rate_limit_exceeded"),
        )
        .insert_header("retry-after", "1"),
    )
    .await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let started = Instant::now();
    let (events, mut rx) = Events::channel();
    provider(settings(&server))
        .generate_with_events(&request("gpt-image-2.6-flare"), &events)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(generations(&server).await, 2);
    let retries: Vec<_> = drain(&mut rx)
        .into_iter()
        .filter_map(|e| match e {
            ProviderEvent::Retrying {
                attempt,
                delay,
                reason,
            } => Some((attempt, delay, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].0, 1);
    assert!(retries[0].1 >= Duration::from_secs(1), "{retries:?}");
    assert!(retries[0].2.contains("HTTP 429"), "{retries:?}");
}

#[tokio::test]
async fn retry_after_ms_beats_retry_after() {
    let server = MockServer::start().await;
    mount_once(
        &server,
        json_error(
            429,
            Some("slow down"),
            "requests",
            Some("rate_limit_exceeded"),
        )
        .insert_header("retry-after-ms", "50")
        .insert_header("retry-after", "30"),
    )
    .await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let started = Instant::now();
    provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(generations(&server).await, 2);
}

#[tokio::test]
async fn a_server_asked_wait_over_120_s_is_not_waited_for() {
    let server = MockServer::start().await;
    mount(
        &server,
        json_error(
            429,
            Some("slow down"),
            "requests",
            Some("rate_limit_exceeded"),
        )
        .insert_header("retry-after", "121"),
    )
    .await;
    let err = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(generations(&server).await, 1);
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert!(err.retryable, "a later call may succeed");
    assert_eq!(err.retry_after, Some(Duration::from_secs(121)));
    assert!(err.message.contains("121 s"), "{err}");
    assert!(err.message.contains("try again after"), "{err}");
}

#[tokio::test]
async fn an_http_date_retry_after_is_understood() {
    let server = MockServer::start().await;
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(180));
    // Not `server_error`: its `retry-after-ms` would win over the date.
    mount(
        &server,
        json_error(503, Some("busy"), "server_error", None)
            .insert_header("retry-after", when.as_str()),
    )
    .await;
    let err = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(generations(&server).await, 1, "180 s is over the cap");
    let wait = err.retry_after.unwrap();
    assert!(
        wait > Duration::from_secs(170) && wait <= Duration::from_secs(180),
        "{wait:?}"
    );
    assert!(err.message.contains("try again after"), "{err}");
}

#[tokio::test]
async fn a_non_json_429_and_an_html_502_are_retried() {
    let server = MockServer::start().await;
    mount_once(
        &server,
        ResponseTemplate::new(429)
            .set_body_string("error code: 1015")
            .insert_header("retry-after-ms", "10"),
    )
    .await;
    mount_once(
        &server,
        ResponseTemplate::new(502)
            .set_body_raw("<html><body>Bad gateway</body></html>", "text/html")
            .insert_header("retry-after-ms", "10"),
    )
    .await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(generations(&server).await, 3);
}

#[tokio::test]
async fn x_should_retry_false_stops_retries() {
    let server = MockServer::start().await;
    mount(
        &server,
        server_error(500).insert_header("x-should-retry", "false"),
    )
    .await;
    let err = provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(generations(&server).await, 1);
    assert!(!err.retryable);
}

#[tokio::test]
async fn x_should_retry_true_retries_even_a_400() {
    let server = MockServer::start().await;
    mount_once(
        &server,
        json_error(400, Some("try again"), "invalid_request_error", None)
            .insert_header("x-should-retry", "true")
            .insert_header("retry-after-ms", "10"),
    )
    .await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    provider(settings(&server))
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(generations(&server).await, 2);
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let cases = [
        (
            "insufficient_quota",
            json_error(
                429,
                Some("quota"),
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
            ErrorKind::QuotaExhausted,
        ),
        (
            "400",
            json_error(
                400,
                Some("Invalid size"),
                "invalid_request_error",
                Some("invalid_size"),
            ),
            ErrorKind::InvalidRequest,
        ),
        (
            "content policy",
            json_error(
                400,
                None,
                "image_generation_user_error",
                Some("moderation_blocked"),
            ),
            ErrorKind::ContentPolicy,
        ),
        (
            "401",
            json_error(401, None, "invalid_request_error", Some("invalid_api_key")),
            ErrorKind::Auth,
        ),
        (
            "403",
            json_error(403, None, "request_forbidden", None),
            ErrorKind::Permission,
        ),
        (
            "404",
            json_error(404, None, "invalid_request_error", Some("model_not_found")),
            ErrorKind::NotFound,
        ),
    ];
    let server = MockServer::start().await;
    for (name, response, kind) in cases {
        server.reset().await;
        mount(&server, response.insert_header("retry-after-ms", "10")).await;
        let err = provider(settings(&server))
            .generate(&request("gpt-image-2.6-flare"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, kind, "{name}");
        assert!(!err.retryable, "{name}");
        assert_eq!(err.attempts, 1, "{name}");
        assert_eq!(generations(&server).await, 1, "{name}");
    }
}

#[tokio::test]
async fn a_read_timeout_is_not_retried_because_it_may_be_billed() {
    let server = MockServer::start().await;
    mount(
        &server,
        ok_b64(&[&png(4, 4)]).set_delay(Duration::from_secs(3)),
    )
    .await;
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert_eq!(err.status, None);
    assert!(
        err.request_sent,
        "a read timeout went out, and may be billed"
    );
    assert!(err.message.contains("billed"), "{err}");
    assert!(err.message.contains("retry_on_timeout"), "{err}");
    assert_eq!(generations(&server).await, 1);
}

#[tokio::test]
async fn a_read_timeout_is_retried_when_configured() {
    let server = MockServer::start().await;
    mount_once(
        &server,
        ok_b64(&[&png(4, 4)]).set_delay(Duration::from_secs(3)),
    )
    .await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(300);
    s.retry_on_timeout = true;
    s.retry_base = Duration::from_millis(10);
    provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap();
    assert_eq!(generations(&server).await, 2);
}

#[tokio::test]
async fn the_deadline_cuts_a_slow_retry_loop() {
    let server = MockServer::start().await;
    mount(
        &server,
        server_error(500)
            .insert_header("retry-after-ms", "100")
            .set_delay(Duration::from_millis(600)),
    )
    .await;
    let mut s = settings(&server);
    s.max_retries = 10;
    s.deadline = Duration::from_millis(1500);
    let started = Instant::now();
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(1900),
        "{elapsed:?}"
    );
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!((2..=3).contains(&err.attempts), "{err:?}");
    let attempts = format!("deadline of 1.5 s after {} attempts", err.attempts);
    assert!(err.message.contains(&attempts), "{err}");
    assert!(
        err.message
            .contains("the last failure before it: upstream_unavailable"),
        "{err}"
    );
}

#[tokio::test]
async fn a_retry_wait_that_would_pass_the_deadline_is_not_started() {
    let server = MockServer::start().await;
    mount(
        &server,
        server_error(500).insert_header("retry-after-ms", "400"),
    )
    .await;
    let mut s = settings(&server);
    s.max_retries = 10;
    s.deadline = Duration::from_millis(1200);
    let started = Instant::now();
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    // Attempts at 0, 0.4 and 0.8 s; the next wait would end just after the deadline.
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
    assert_eq!(err.attempts, 3);
    assert_eq!(generations(&server).await, 3);
    assert!(
        err.message
            .contains("waiting 0.4 s would pass the call's deadline of 1.2 s"),
        "{err}"
    );
}

#[tokio::test]
async fn dropping_the_call_during_a_retry_wait_stops_it() {
    let server = MockServer::start().await;
    mount(
        &server,
        server_error(503).insert_header("retry-after-ms", "400"),
    )
    .await;
    let p = provider(settings(&server));
    let req = request("gpt-image-2.6-flare");
    let cut = tokio::time::timeout(Duration::from_millis(150), p.generate(&req)).await;
    assert!(cut.is_err(), "still waiting to retry");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(generations(&server).await, 1, "the retry never happened");
}

#[tokio::test]
async fn events_report_each_attempt_and_the_answer() {
    let server = MockServer::start().await;
    mount_once(&server, server_error(500)).await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let (events, mut rx) = Events::channel();
    provider(settings(&server))
        .generate_with_events(&request("gpt-image-2.6-flare"), &events)
        .await
        .unwrap();
    let seen: Vec<String> = drain(&mut rx)
        .iter()
        .map(|e| match e {
            ProviderEvent::Requesting { attempt, .. } => format!("requesting {attempt}"),
            ProviderEvent::Retrying { attempt, .. } => format!("retrying after {attempt}"),
            ProviderEvent::Receiving => "receiving".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "requesting 1",
            "retrying after 1",
            "requesting 2",
            "receiving"
        ]
    );
}

/// A local address nothing listens on.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

#[tokio::test]
async fn connection_failures_are_network_errors_and_retried() {
    let mut s = OpenAiSettings::new(closed_port_url().await.parse().unwrap(), Some(KEY.into()));
    s.max_retries = 1;
    let started = Instant::now();
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Network);
    assert!(err.retryable);
    assert!(!err.request_sent, "nothing went out to a closed port");
    assert_eq!(err.retry, imagegen_providers::RetryStatus::Persistent);
    assert!(err.message.contains("after 1 retry"), "{err}");
    // One backoff of 0.5 s * jitter in (0.75, 1].
    assert!(
        started.elapsed() >= Duration::from_millis(375),
        "{:?}",
        started.elapsed()
    );
}

// ---- key pools ----------------------------------------------------------------------------

const KEY_A: &str = "sk-SENTINEL-pool-0000AAAA";
const KEY_B: &str = "sk-SENTINEL-pool-0000BBBB";

/// Settings with a pool of two keys, tried A first.
fn pool_settings(server: &MockServer) -> OpenAiSettings {
    let mut s = settings(server);
    s.keys = Arc::new(KeyPool::new(
        [KEY_A, KEY_B].map(|k| (SecretString::from(k), "test".to_string())),
        Duration::from_secs(600),
    ));
    s
}

/// Answers requests carrying `key` with `response`.
async fn mount_for_key(server: &MockServer, key: &str, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(response)
        .mount(server)
        .await;
}

/// Which pool key each generation request carried, in order: `A` or `B`.
async fn keys_used(server: &MockServer) -> String {
    requests(server)
        .await
        .iter()
        .filter(|r| r.url.path() == GENERATIONS)
        .map(
            |r| match r.headers.get("authorization").unwrap().to_str().unwrap() {
                v if v.ends_with(KEY_A) => 'A',
                v if v.ends_with(KEY_B) => 'B',
                _ => '?',
            },
        )
        .collect()
}

fn drain(rx: &mut UnboundedReceiver<ProviderEvent>) -> Vec<ProviderEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn switches(events: &[ProviderEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            ProviderEvent::SwitchingKey { from, reason } => Some((from.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn assert_no_pool_key(text: &str) {
    assert!(!text.contains("SENTINEL"), "{text}");
}

#[tokio::test]
async fn a_rate_limited_key_hands_the_call_to_another_at_once_without_a_retry() {
    let server = MockServer::start().await;
    mount_for_key(
        &server,
        KEY_A,
        json_error(
            429,
            Some("slow down"),
            "requests",
            Some("rate_limit_exceeded"),
        )
        .insert_header("retry-after", "30"),
    )
    .await;
    mount_for_key(&server, KEY_B, ok_b64(&[&png(4, 4)])).await;
    let mut s = pool_settings(&server);
    s.max_retries = 0;
    let p = provider(s);
    let (events, mut rx) = Events::channel();
    let started = Instant::now();
    p.generate_with_events(&request("gpt-image-2.6-flare"), &events)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "no wait");
    assert_eq!(keys_used(&server).await, "AB");
    let events = drain(&mut rx);
    let moved = switches(&events);
    assert_eq!(moved.len(), 1, "{events:?}");
    assert_eq!(moved[0].0, "sk-…AAAA");
    assert!(moved[0].1.contains("rate limited (HTTP 429"), "{moved:?}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, ProviderEvent::Retrying { .. })));
    assert_no_pool_key(&format!("{events:?} {p:?}"));

    // A rests for the 30 s the server asked: the next call goes straight to B.
    p.generate(&request("gpt-image-2.6-flare")).await.unwrap();
    assert_eq!(keys_used(&server).await, "ABB");
}

#[tokio::test]
async fn a_rejected_key_is_disabled_and_the_call_moves_on() {
    let refusals = [
        (
            "401",
            json_error(
                401,
                Some(&format!("Incorrect API key provided: {KEY_A}")),
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            "rejected (HTTP 401, invalid_api_key)",
        ),
        (
            "403",
            json_error(403, Some("no access"), "request_forbidden", None),
            "not permitted (HTTP 403",
        ),
        (
            "insufficient_quota",
            json_error(
                429,
                Some("quota"),
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
            "out of quota or over the billing limit (HTTP 429, insufficient_quota)",
        ),
        (
            "billing",
            json_error(
                400,
                Some("Billing hard limit has been reached"),
                "billing_hard_limit_reached",
                None,
            ),
            "out of quota or over the billing limit (HTTP 400, billing_hard_limit_reached)",
        ),
    ];
    for (name, refusal, reason) in refusals {
        let server = MockServer::start().await;
        mount_for_key(&server, KEY_A, refusal).await;
        mount_for_key(&server, KEY_B, ok_b64(&[&png(4, 4)])).await;
        let mut s = pool_settings(&server);
        s.max_retries = 0;
        let p = provider(s);
        let (events, mut rx) = Events::channel();
        p.generate_with_events(&request("gpt-image-2.6-flare"), &events)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let events = drain(&mut rx);
        let moved = switches(&events);
        assert_eq!(moved.len(), 1, "{name}: {events:?}");
        assert!(moved[0].1.starts_with(reason), "{name}: {moved:?}");
        assert_no_pool_key(&format!("{events:?}"));
        for _ in 0..3 {
            p.generate(&request("gpt-image-2.6-flare")).await.unwrap();
        }
        assert_eq!(
            keys_used(&server).await,
            "ABBBB",
            "{name}: A is never used again"
        );
    }
}

#[tokio::test]
async fn when_every_key_is_rejected_the_error_names_each_and_later_calls_fail_at_once() {
    let server = MockServer::start().await;
    mount(
        &server,
        json_error(
            401,
            Some("Incorrect API key provided"),
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
    )
    .await;
    let p = provider(pool_settings(&server));
    let err = p
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(!err.retryable);
    assert_eq!(err.attempts, 2);
    assert_eq!(keys_used(&server).await, "AB");
    assert!(
        err.message.contains("sk-…AAAA") && err.message.contains("sk-…BBBB"),
        "{err}"
    );
    assert_no_pool_key(&format!("{err} {err:?}"));

    let started = Instant::now();
    let err = p
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(err.kind, ErrorKind::Auth);
    assert_eq!(err.attempts, 0);
    assert_eq!(generations(&server).await, 2, "no request was made");
    assert!(
        err.message.contains("sk-…AAAA disabled") && err.message.contains("sk-…BBBB disabled"),
        "{err}"
    );
    assert_no_pool_key(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn when_every_key_is_rate_limited_the_call_waits_and_that_is_a_retry() {
    let server = MockServer::start().await;
    let limited = || {
        json_error(
            429,
            Some("slow down"),
            "requests",
            Some("rate_limit_exceeded"),
        )
        .insert_header("retry-after-ms", "200")
    };
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(limited())
        .up_to_n_times(2)
        .mount(&server)
        .await;
    mount(&server, ok_b64(&[&png(4, 4)])).await;
    let mut s = pool_settings(&server);
    s.max_retries = 1;
    let (events, mut rx) = Events::channel();
    let started = Instant::now();
    provider(s)
        .generate_with_events(&request("gpt-image-2.6-flare"), &events)
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(keys_used(&server).await, "ABA");
    let events = drain(&mut rx);
    assert_eq!(switches(&events).len(), 1, "{events:?}");
    let retries = events
        .iter()
        .filter(|e| matches!(e, ProviderEvent::Retrying { attempt: 2, .. }))
        .count();
    assert_eq!(retries, 1, "{events:?}");

    // With no retries allowed, the same situation fails once both keys are limited.
    server.reset().await;
    mount(&server, limited()).await;
    let mut s = pool_settings(&server);
    s.max_retries = 0;
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert_eq!(err.attempts, 2);
    assert_eq!(keys_used(&server).await, "AB");
}

// ---- secrets ------------------------------------------------------------------------------

fn assert_no_key(err: &ProviderError, what: &str) {
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(KEY), "{what}: {shown}");
    assert!(!shown.contains("SENTINEL"), "{what}: {shown}");
    assert!(!shown.contains("Bearer"), "{what}: {shown}");
}

#[tokio::test]
async fn the_key_never_shows_in_debug_or_errors() {
    let server = MockServer::start().await;
    let mut s = settings(&server);
    s.max_retries = 0;
    let p = provider(s);
    let debug = format!("{p:?}");
    assert!(
        !debug.contains(KEY) && !debug.contains("SENTINEL"),
        "{debug}"
    );

    // A careless server echoing the key back.
    mount_once(
        &server,
        json_error(
            401,
            Some(&format!("Incorrect API key provided: {KEY}")),
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
    )
    .await;
    let err = p
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_no_key(&err, "401");
    assert!(err.message.contains("sk-…6789"), "{err}");
    assert!(err.message.contains("rejected"), "{err}");

    mount_once(
        &server,
        ResponseTemplate::new(500).set_body_string(format!("boom {KEY}")),
    )
    .await;
    let mut s = settings(&server);
    s.max_retries = 0;
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(500));
    assert_no_key(&err, "500");

    let mut s = OpenAiSettings::new(closed_port_url().await.parse().unwrap(), Some(KEY.into()));
    s.max_retries = 0;
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Network);
    assert_no_key(&err, "network");
}

#[tokio::test]
async fn a_401_without_a_key_says_to_set_one() {
    let server = MockServer::start().await;
    mount(
        &server,
        json_error(
            401,
            Some("Missing bearer authentication"),
            "invalid_request_error",
            None,
        ),
    )
    .await;
    let mut s = settings(&server);
    s.keys = std::sync::Arc::new(imagegen_providers::keys::KeyPool::empty());
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(err.message.contains("OPENAI_API_KEY"), "{err}");
}

/// Serves one chunked response (no `content-length`), so only the streaming cap can stop it.
async fn chunked_server(total: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 64 * 1024];
        let _ = socket.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 4096];
        let mut sent = 0;
        while sent < total {
            let frame = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            if socket.write_all(&frame).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn an_endless_chunked_body_is_cut_off_at_the_cap() {
    let base = chunked_server(10 * 1024 * 1024).await;
    let mut s = OpenAiSettings::new(base.parse().unwrap(), None);
    s.max_response_bytes = 1024 * 1024;
    let err = provider(s)
        .generate(&request("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(
        err.message.contains("response is larger than 1 MiB"),
        "{err}"
    );
}

#[tokio::test]
async fn a_lone_key_is_not_disabled_by_a_403_so_other_models_still_work() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .and(body_partial_json(json!({"model": "gpt-image-2"})))
        .respond_with(json_error(
            403,
            Some("Your organization must be verified to use the model"),
            "invalid_request_error",
            None,
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(ok_b64(&[&png(4, 4)]))
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.keys = Arc::new(KeyPool::new(
        [(SecretString::from(KEY_A), "test".to_string())],
        Duration::from_secs(600),
    ));
    let p = provider(s);
    let err = p.generate(&request("gpt-image-2")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permission);
    p.generate(&request("gpt-image-2.6-flare")).await.unwrap();
}

#[tokio::test]
async fn a_call_starting_while_its_only_key_cools_briefly_waits_instead_of_failing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(
            json_error(
                429,
                Some("slow down"),
                "requests",
                Some("rate_limit_exceeded"),
            )
            .insert_header("retry-after-ms", "300"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(ok_b64(&[&png(4, 4)]))
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.keys = Arc::new(KeyPool::new(
        [(SecretString::from(KEY_A), "test".to_string())],
        Duration::from_secs(600),
    ));
    s.max_retries = 0;
    let p = provider(s);
    assert_eq!(
        p.generate(&request("gpt-image-2.6-flare"))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::RateLimited
    );
    // The key now rests for 300 ms: the next call waits for it rather than failing at once.
    let started = Instant::now();
    p.generate(&request("gpt-image-2.6-flare")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

// ---- edits and variations -----------------------------------------------------------------

const EDITS: &str = "/v1/images/edits";
const VARIATIONS: &str = "/v1/images/variations";

fn encoded(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([10, 120, 200]));
    encoded(
        image::DynamicImage::ImageRgb8(img),
        image::ImageFormat::Jpeg,
    )
}

fn rgba_mask(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(width, height, image::Rgba([0, 0, 0, 0]));
    encoded(
        image::DynamicImage::ImageRgba8(img),
        image::ImageFormat::Png,
    )
}

/// Two images (a PNG and a JPEG) and a mask, with every parameter an edit can carry.
fn full_edit(model: &str) -> EditRequest {
    let images = vec![
        InputImage::new(png(16, 16), ImageFormat::Png, "image-1.png"),
        InputImage::new(jpeg(16, 16), ImageFormat::Jpeg, "image-2.jpg"),
    ];
    let mut r = EditRequest::new("give the cat a red hat", model, images);
    r.mask = Some(InputImage::new(
        rgba_mask(16, 16),
        ImageFormat::Png,
        "mask.png",
    ));
    r.options.size = Some("1024x1536".into());
    r.options.quality = Some("high".into());
    r.options.n = Some(2);
    r.options.output_format = Some(ImageFormat::Webp);
    r.options.output_compression = Some(70);
    r.options.background = Some("opaque".into());
    r.options.input_fidelity = Some("high".into());
    r.options.moderation = Some("low".into());
    r.options.seed = Some(3); // not an OpenAI parameter: never sent
    r.options
        .extra
        .get_or_insert_with(Default::default)
        .insert("user".into(), json!("user-42"));
    r.options
        .extra
        .get_or_insert_with(Default::default)
        .insert("image".into(), json!("hijack")); // cannot shadow the file parts
    r
}

async fn forms(server: &MockServer, route: &str) -> Vec<Form> {
    requests(server)
        .await
        .iter()
        .filter(|r| r.url.path() == route)
        .map(|r| Form::parse(r).expect("a well-formed multipart body"))
        .collect()
}

fn texts(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn an_edit_uploads_one_file_part_per_image_the_mask_and_the_taken_fields() {
    let server = MockServer::start().await;
    let has_the_parts = MultipartForm(|form: &Form| {
        form.files("image[]").len() == 2
            && form.files("mask").len() == 1
            && form.text("model").as_deref() == Some("gpt-image-2.6-flare")
            && form.text("input_fidelity").as_deref() == Some("high")
    });
    Mock::given(method("POST"))
        .and(path(EDITS))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(has_the_parts)
        .respond_with(ok_b64(&[&png(8, 8), &png(8, 8)]).insert_header("x-request-id", "req_edit"))
        .expect(1)
        .mount(&server)
        .await;
    let request = full_edit("gpt-image-2.6-flare");
    let result = provider(settings(&server)).edit(&request).await.unwrap();
    assert_eq!(result.images.len(), 2);
    assert_eq!(result.model, "gpt-image-2.6-flare");
    assert_eq!(result.request_id.as_deref(), Some("req_edit"));

    let received = &requests(&server).await[0];
    let content_type = received
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    // Every part's length is known, so the upload is not chunked (some servers refuse that).
    let length: usize = received.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, received.body.len());
    let form = Form::parse(received).unwrap();
    assert_eq!(
        form.texts(),
        texts(&[
            ("model", "gpt-image-2.6-flare"),
            ("prompt", "give the cat a red hat"),
            ("n", "2"),
            ("size", "1024x1536"),
            ("quality", "high"),
            ("output_format", "webp"),
            ("output_compression", "70"),
            ("background", "opaque"),
            ("input_fidelity", "high"),
            ("moderation", "low"),
            ("user", "user-42"),
        ])
    );
    let images = form.files("image[]");
    let described: Vec<_> = images
        .iter()
        .map(|p| {
            (
                p.filename.as_deref().unwrap(),
                p.content_type.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [("image-1.png", "image/png"), ("image-2.jpg", "image/jpeg")]
    );
    assert_eq!(images[0].body, &request.images[0].bytes[..]);
    assert_eq!(images[1].body, &request.images[1].bytes[..]);
    let mask = form.files("mask")[0];
    assert_eq!(
        (mask.filename.as_deref(), mask.content_type.as_deref()),
        (Some("mask.png"), Some("image/png"))
    );
    assert_eq!(mask.body, &request.mask.as_ref().unwrap().bytes[..]);
    assert!(form.files("image").is_empty() && form.text("image").is_none());
}

#[tokio::test]
async fn a_dall_e_2_edit_sends_its_one_image_as_image_and_asks_for_base64() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(EDITS))
        .respond_with(ok_b64(&[&png(8, 8)]))
        .mount(&server)
        .await;
    let mut request = full_edit("dall-e-2");
    request.images.truncate(1);
    request.options.size = Some("512x512".into());
    request.options.quality = None;
    request.options.n = Some(1);
    request.options.output_format = None;
    request.options.output_compression = None;
    request.options.extra = None;
    // dall-e-2 takes none of these: the guard leaves them off the wire.
    request.options.background = Some("opaque".into());
    request.options.input_fidelity = Some("high".into());
    request.options.moderation = Some("low".into());
    provider(settings(&server)).edit(&request).await.unwrap();
    let form = &forms(&server, EDITS).await[0];
    assert_eq!(
        form.texts(),
        texts(&[
            ("model", "dall-e-2"),
            ("prompt", "give the cat a red hat"),
            ("n", "1"),
            ("size", "512x512"),
            ("response_format", "b64_json"),
        ])
    );
    assert_eq!(form.files("image").len(), 1);
    assert!(form.files("image[]").is_empty());
    let mut names = form.names();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "image",
            "mask",
            "model",
            "n",
            "prompt",
            "response_format",
            "size"
        ]
    );
}

#[tokio::test]
async fn an_edit_retried_after_a_500_sends_the_whole_form_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(EDITS))
        .respond_with(server_error(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(EDITS))
        .respond_with(ok_b64(&[&png(8, 8), &png(8, 8)]))
        .mount(&server)
        .await;
    let (events, mut rx) = Events::channel();
    provider(settings(&server))
        .edit_with_events(&full_edit("gpt-image-2.6-flare"), &events)
        .await
        .unwrap();
    let sent = forms(&server, EDITS).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], sent[1], "the retry carries every part again");
    assert_eq!(sent[1].files("image[]").len(), 2);
    assert_eq!(sent[1].files("mask").len(), 1);
    let retries = drain(&mut rx)
        .iter()
        .filter(|e| matches!(e, ProviderEvent::Retrying { .. }))
        .count();
    assert_eq!(retries, 1);
}

#[tokio::test]
async fn an_edit_refused_by_the_safety_system_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(EDITS))
        .respond_with(
            json_error(
                400,
                Some("Your request was rejected by the safety system."),
                "image_generation_user_error",
                Some("moderation_blocked"),
            )
            .insert_header("x-request-id", "req_refused"),
        )
        .mount(&server)
        .await;
    let err = provider(settings(&server))
        .edit(&full_edit("gpt-image-2.6-flare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContentPolicy);
    assert!(!err.retryable);
    assert_eq!(err.attempts, 1);
    assert_eq!(err.provider_code.as_deref(), Some("moderation_blocked"));
    assert_eq!(err.request_id.as_deref(), Some("req_refused"));
    assert_eq!(forms(&server, EDITS).await.len(), 1);
}

fn sse(name: &str, mut data: Value) -> String {
    data["type"] = name.into();
    format!("event: {name}\ndata: {data}\n\n")
}

#[tokio::test]
async fn a_streamed_edit_reports_image_edit_partials_then_the_final_image() {
    let server = MockServer::start().await;
    let body = [
        sse("image_edit.partial_image", json!({"b64_json": b64(&png(4, 6)), "partial_image_index": 0})),
        sse("image_edit.partial_image", json!({"b64_json": b64(&png(4, 6)), "partial_image_index": 1})),
        sse(
            "image_edit.completed",
            json!({"b64_json": b64(&png(16, 24)), "usage": {"input_tokens": 300, "output_tokens": 1000, "total_tokens": 1300}}),
        ),
    ]
    .concat();
    Mock::given(method("POST"))
        .and(path(EDITS))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .mount(&server)
        .await;
    let mut request = full_edit("gpt-image-2.6-flare");
    request.options.n = Some(1);
    request.options.partial_images = Some(2);
    let (events, mut rx) = Events::channel();
    let result = provider(settings(&server))
        .edit_with_events(&request, &events)
        .await
        .unwrap();
    assert_eq!((result.images[0].width, result.images[0].height), (16, 24));
    assert_eq!(result.usage.unwrap().total_tokens, Some(1300));
    let partials: Vec<_> = drain(&mut rx)
        .into_iter()
        .filter_map(|e| match e {
            ProviderEvent::PartialImage { index, image } => {
                Some((index, image.width, image.height))
            }
            _ => None,
        })
        .collect();
    assert_eq!(partials, [(0, 4, 6), (1, 4, 6)]);
    let form = &forms(&server, EDITS).await[0];
    assert_eq!(form.text("stream").as_deref(), Some("true"));
    assert_eq!(form.text("partial_images").as_deref(), Some("2"));
}

#[tokio::test]
async fn a_variation_uploads_the_image_and_asks_for_base64() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(VARIATIONS))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(MultipartForm(|form: &Form| form.files("image").len() == 1))
        .respond_with(ok_b64(&[&png(8, 8), &png(8, 8)]))
        .expect(1)
        .mount(&server)
        .await;
    let image = InputImage::new(png(16, 16), ImageFormat::Png, "source.png");
    let mut request = VariationRequest::new("dall-e-2", image);
    request.n = 2;
    request.size = Some("512x512".into());
    request.extra.insert("user".into(), json!("user-42"));
    let result = provider(settings(&server))
        .variation(&request)
        .await
        .unwrap();
    assert_eq!(result.images.len(), 2);
    assert_eq!(result.model, "dall-e-2");
    let form = &forms(&server, VARIATIONS).await[0];
    assert_eq!(
        form.texts(),
        texts(&[
            ("model", "dall-e-2"),
            ("n", "2"),
            ("size", "512x512"),
            ("response_format", "b64_json"),
            ("user", "user-42"),
        ])
    );
    let part = form.files("image")[0];
    assert_eq!(
        (part.filename.as_deref(), part.content_type.as_deref()),
        (Some("source.png"), Some("image/png"))
    );
    assert_eq!(part.body, &request.image.bytes[..]);
}

#[tokio::test]
async fn variations_and_edits_the_model_cannot_do_are_refused_without_a_request() {
    let server = MockServer::start().await;
    let p = imagegen_providers::layers::Checked::new(
        std::sync::Arc::new(provider(settings(&server))),
        std::sync::Arc::new(imagegen_providers::Catalog::builtin()),
    );
    let image = InputImage::new(png(16, 16), ImageFormat::Png, "source.png");
    let err = p
        .variation(&VariationRequest::new("gpt-image-2.6-flare", image))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(!err.retryable);
    assert!(
        err.message
            .contains("gpt-image-2.6-flare cannot make image variations"),
        "{err}"
    );
    assert!(
        err.message.contains("dall-e-2"),
        "names the models that can: {err}"
    );
    let err = p.edit(&full_edit("dall-e-3")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.message.contains("dall-e-3"), "{err}");
    assert!(requests(&server).await.is_empty());
}

#[tokio::test]
async fn an_edit_to_2_6_uploads_the_markup_layer_and_the_2_6_fields() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(EDITS))
        .respond_with(ok_b64(&[&png(8, 8)]))
        .mount(&server)
        .await;
    let p = provider(settings(&server));
    let markup = InputImage::new(rgba_mask(16, 16), ImageFormat::Png, "markup.png");
    let mut svg_edit = full_edit("gpt-image-2.6-sunburst");
    svg_edit.mask = None;
    svg_edit.markup = Some(markup.clone());
    svg_edit.options.n = Some(1);
    svg_edit.options.output_format = Some(ImageFormat::Svg);
    svg_edit.options.output_compression = None;
    svg_edit.options.complexity = Some("medium".into());
    svg_edit.options.svg = Some(svg_options(Some("low")));
    svg_edit.options.frame_count = Some(4); // not a GIF: never sent
    svg_edit.options.extra = None;
    svg_edit
        .options
        .extra
        .get_or_insert_with(Default::default)
        .insert("markup".into(), json!("hijack")); // cannot shadow the file part
    p.edit(&svg_edit).await.unwrap();

    let mut gif_edit = svg_edit.clone();
    gif_edit.options.output_format = Some(ImageFormat::Gif);
    gif_edit.markup = None;
    gif_edit.options.svg = Some(svg_options(Some("low"))); // not an SVG: never sent
    gif_edit.options.frame_count = Some(6);
    gif_edit.options.frame_duration_ms = Some(80);
    gif_edit.options.partial_images = Some(1); // a GIF never streams
    gif_edit.options.extra = None;
    p.edit(&gif_edit).await.unwrap();

    // 2.5 takes neither markup nor complexity: the guard leaves both off the wire.
    let mut older = svg_edit.clone();
    older.model = "gpt-image-2.5-sunburst".into();
    older.options.output_format = Some(ImageFormat::Png);
    older.options.extra = None;
    p.edit(&older).await.unwrap();

    let raw = requests(&server).await;
    assert!(
        String::from_utf8_lossy(&raw[0].body).contains("name=\"markup\"; filename=\"markup.png\""),
        "the markup goes as a file part"
    );
    let forms = forms(&server, EDITS).await;
    let part = forms[0].files("markup");
    assert_eq!(part.len(), 1);
    assert_eq!(
        (part[0].filename.as_deref(), part[0].content_type.as_deref()),
        (Some("markup.png"), Some("image/png"))
    );
    assert_eq!(part[0].body, &markup.bytes[..]);
    assert_eq!(forms[0].files("image[]").len(), 2);
    assert_eq!(
        forms[0].texts(),
        texts(&[
            ("model", "gpt-image-2.6-sunburst"),
            ("prompt", "give the cat a red hat"),
            ("n", "1"),
            ("size", "1024x1536"),
            ("quality", "high"),
            ("output_format", "svg"),
            ("background", "opaque"),
            ("input_fidelity", "high"),
            ("moderation", "low"),
            ("complexity", "medium"),
            (
                "svg",
                r#"{"model":"gpt-5.5-mini","reasoning":{"effort":"low"}}"#
            ),
        ])
    );
    assert_eq!(
        forms[1].texts(),
        texts(&[
            ("model", "gpt-image-2.6-sunburst"),
            ("prompt", "give the cat a red hat"),
            ("n", "1"),
            ("size", "1024x1536"),
            ("quality", "high"),
            ("output_format", "gif"),
            ("background", "opaque"),
            ("input_fidelity", "high"),
            ("moderation", "low"),
            ("complexity", "medium"),
            ("frame_count", "6"),
            ("frame_duration_ms", "80"),
        ])
    );
    assert!(forms[1].files("markup").is_empty());
    assert!(forms[2].files("markup").is_empty());
    assert!(!forms[2].names().contains(&"markup"));
    assert_eq!(forms[2].text("complexity"), None);
    assert_eq!(
        forms[2].text("model").as_deref(),
        Some("gpt-image-2.5-sunburst")
    );
}

// ---- model listing ------------------------------------------------------------------------

const MODELS: &str = "/v1/models";

fn models_body(entries: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": entries}))
}

#[tokio::test]
async fn list_models_reads_shutdown_dates_and_keeps_image_models() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MODELS))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("openai-organization", "org-123"))
        .and(header("openai-project", "proj_456"))
        .respond_with(models_body(json!([
            {"id": "gpt-image-2.6-flare", "object": "model", "created": 1795537142, "owned_by": "system", "shutdown_date": null},
            {"id": "gpt-image-1.5", "object": "model", "created": 1, "owned_by": "system", "shutdown_date": "2026-12-01"},
            {"id": "gpt-image-2", "object": "model", "created": 1, "owned_by": "system"},
            {"id": "dall-e-3", "object": "model", "shutdown_date": "2026-05-12", "permission": [{"x": 1}]},
            {"id": "chatgpt-image-latest", "shutdown_date": {"when": "soon"}},
            {"id": "gpt-4o", "object": "model", "shutdown_date": "2027-03-01"},
            {"id": "omni-moderation-latest", "object": "model"},
            {"id": 7, "object": "model"},
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.organization = Some("org-123".into());
    s.project = Some("proj_456".into());
    let models = provider(s).list_models().await.unwrap();
    assert_eq!(
        models,
        [
            UpstreamModel::new("chatgpt-image-latest", None),
            UpstreamModel::new("dall-e-3", Some("2026-05-12".into())),
            UpstreamModel::new("gpt-image-1.5", Some("2026-12-01".into())),
            UpstreamModel::new("gpt-image-2", None),
            UpstreamModel::new("gpt-image-2.6-flare", None),
        ]
    );
}

#[tokio::test]
async fn list_models_without_a_key_sends_no_authorization() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MODELS))
        .respond_with(models_body(json!([{"id": "gpt-image-2"}])))
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.keys = Arc::new(KeyPool::empty());
    let models = provider(s).list_models().await.unwrap();
    assert_eq!(models, [UpstreamModel::new("gpt-image-2", None)]);
    assert!(requests(&server).await[0]
        .headers
        .get("authorization")
        .is_none());
}

#[tokio::test]
async fn a_rejected_key_fails_the_listing_without_showing_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MODELS))
        .respond_with(
            json_error(
                401,
                Some(&format!("Incorrect API key provided: {KEY}")),
                "invalid_request_error",
                Some("invalid_api_key"),
            )
            .insert_header("x-request-id", "req_models"),
        )
        .mount(&server)
        .await;
    let err = provider(settings(&server)).list_models().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert_eq!(err.status, Some(401));
    assert_eq!(err.request_id.as_deref(), Some("req_models"));
    assert!(!err.model_unavailable);
    assert_no_key(&err, "listing 401");
    assert!(err.message.contains("sk-…6789"), "{err}");
    assert_eq!(requests(&server).await.len(), 1, "one attempt");
}

#[tokio::test]
async fn a_malformed_listing_is_a_bad_response() {
    let server = MockServer::start().await;
    let p = provider(settings(&server));
    let bodies = [
        ResponseTemplate::new(200).set_body_string("<html>not json</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"object": "list"})),
        ResponseTemplate::new(200).set_body_json(json!({"data": "gpt-image-2"})),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(MODELS))
            .respond_with(body.insert_header("x-request-id", "req_bad"))
            .mount(&server)
            .await;
        let err = p.list_models().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "case {i}: {err}");
        assert_eq!(err.request_id.as_deref(), Some("req_bad"), "case {i}");
    }
}

#[tokio::test]
async fn a_slow_listing_times_out_at_the_attempt_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MODELS))
        .respond_with(models_body(json!([])).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = provider(s).list_models().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
