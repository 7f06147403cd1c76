//! The OpenAI provider against hostile upstreams: servers, proxies and gateways that echo
//! secrets, ask for absurd waits, answer more than was asked or point at other ports. None of
//! it may leak a key, panic, hang or grow memory without bound.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagegen_providers::{
    openai::{OpenAiProvider, OpenAiSettings},
    ErrorKind, GenerateRequest, ImageProviderExt, ProviderError,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, ResponseTemplate,
};

const KEY: &str = "sk-SENTINEL-hostile-0123456789abcdef";
const PASSWORD: &str = "SENTINELPASS";
const GENERATIONS: &str = "/v1/images/generations";

fn png(width: u32, height: u32) -> Vec<u8> {
    imagegen_testkit::img::png_rgba(width, height, [10, 200, 90, 255])
}

use imagegen_testkit::img::b64;

/// Settings with the sentinel key and a base URL carrying the sentinel password.
fn settings(server: &MockServer) -> OpenAiSettings {
    let port = server.address().port();
    let base = format!("http://user:{PASSWORD}@127.0.0.1:{port}/v1");
    let mut s = OpenAiSettings::new(base.parse().unwrap(), Some(SecretString::from(KEY)));
    s.max_retries = 0;
    s
}

fn provider(settings: OpenAiSettings) -> OpenAiProvider {
    OpenAiProvider::new(settings, reqwest::Client::new())
}

fn request() -> GenerateRequest {
    GenerateRequest::new("a lighthouse at dusk", "gpt-image-2.6-flare")
}

async fn mount(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(response)
        .mount(server)
        .await;
}

/// Asserts that no secret shows in `text`.
fn assert_clean(text: &str, what: &str) {
    assert!(!text.contains(KEY), "{what}: the key leaked: {text}");
    assert!(
        !text.contains("SENTINEL"),
        "{what}: part of a secret leaked: {text}"
    );
    // 14 of the key's last 15 characters were what survived a cut before.
    assert!(
        !text.contains("0123456789abc"),
        "{what}: a key fragment leaked: {text}"
    );
}

fn assert_no_secret(err: &ProviderError, what: &str) {
    assert_clean(&format!("{err} {err:?}"), what);
}

/// Every log line the closure's calls write, fields included, at every level.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Fields(&mut self.0.lock().unwrap()));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut logs = self.0.lock().unwrap();
        event.record(&mut Fields(&mut logs));
        logs.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Logs {
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Runs one generation against `response`, with logs captured; returns the error and the logs.
async fn failing_call(response: ResponseTemplate) -> (ProviderError, String, usize) {
    let server = MockServer::start().await;
    mount(&server, response).await;
    let logs = Logs::default();
    let guard = tracing::subscriber::set_default(logs.clone());
    let err = provider(settings(&server))
        .generate(&request())
        .await
        .expect_err("the hostile answer must fail the call");
    drop(guard);
    let sent = server.received_requests().await.unwrap().len();
    (err, logs.text(), sent)
}

fn error_body(field: &str, value: &str) -> ResponseTemplate {
    let mut error =
        json!({"message": "bad", "type": "invalid_request_error", "param": null, "code": null});
    error[field] = value.into();
    ResponseTemplate::new(400).set_body_json(json!({ "error": error }))
}

// ---- 1. secrets echoed by the upstream ---------------------------------------------------

#[tokio::test]
async fn a_key_echoed_in_any_error_field_never_comes_back() {
    let echo = format!("Incorrect API key provided: {KEY}");
    for field in ["message", "code", "type", "param"] {
        let (err, logs, _) = failing_call(error_body(field, &echo)).await;
        assert_no_secret(&err, field);
        assert_clean(&logs, field);
    }
    // A 429 carrying the key in its code also names the key in the pool's reason and log.
    let (err, logs, _) = failing_call(
        error_body("code", KEY)
            .set_body_json(json!({"error": {"message": "slow", "code": KEY}}))
            .insert_header("retry-after", "0"),
    )
    .await;
    assert_no_secret(&err, "429 code");
    assert_clean(&logs, "429 code");
}

#[tokio::test]
async fn a_base_url_password_echoed_back_never_comes_back() {
    let basic = b64(format!("user:{PASSWORD}").as_bytes());
    let said = format!("we saw http://user:{PASSWORD}@127.0.0.1/v1 and Basic {basic}");
    let (err, logs, _) = failing_call(error_body("message", &said)).await;
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PASSWORD) && !text.contains(&basic), "{text}");
    assert!(!logs.contains(PASSWORD), "{logs}");
    let server = MockServer::start().await;
    let shown = format!("{:?}", provider(settings(&server)));
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[tokio::test]
async fn a_key_in_the_request_id_header_drops_the_id() {
    let (err, logs, _) =
        failing_call(error_body("message", "nope").insert_header("x-request-id", KEY)).await;
    assert_no_secret(&err, "x-request-id");
    assert_clean(&logs, "x-request-id");
    assert_eq!(err.request_id, None);

    let odd = format!("req <script>{}", "x".repeat(300));
    let (err, _, _) =
        failing_call(error_body("message", "nope").insert_header("x-request-id", odd.as_str()))
            .await;
    assert_eq!(err.request_id, None, "an unsafe or overlong id is dropped");
    let (err, _, _) =
        failing_call(error_body("message", "nope").insert_header("x-request-id", "req_abc-1.2:3"))
            .await;
    assert_eq!(err.request_id.as_deref(), Some("req_abc-1.2:3"));
}

#[tokio::test]
async fn a_200_of_the_wrong_shape_quoting_the_authorization_header_is_scrubbed() {
    let bodies = [
        format!(r#"{{"data": "Authorization: Bearer {KEY}"}}"#),
        format!("echo: Authorization: Bearer {KEY}"),
        format!(r#"{{"data": [{{"b64_json": 7, "url": {{"h": "Bearer {KEY}"}}}}], "x": "#),
    ];
    for body in bodies {
        let (err, logs, _) =
            failing_call(ResponseTemplate::new(200).set_body_raw(body.clone(), "application/json"))
                .await;
        assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
        assert_no_secret(&err, &body);
        assert_clean(&logs, &body);
    }
}

#[tokio::test]
async fn a_key_in_the_revised_prompt_is_scrubbed() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200)
            .insert_header("x-request-id", KEY)
            .set_body_json(json!({"data": [{"b64_json": b64(&png(4, 4)),
            "revised_prompt": format!("a lighthouse, key {KEY}")}]})),
    )
    .await;
    let result = provider(settings(&server))
        .generate(&request())
        .await
        .unwrap();
    let prompt = result.revised_prompt.clone().unwrap();
    assert_clean(&prompt, "revised_prompt");
    assert!(prompt.contains("a lighthouse"), "{prompt}");
    assert_eq!(result.request_id, None);
}

#[tokio::test]
async fn a_key_straddling_the_cut_of_a_text_body_or_a_stream_error_never_shows() {
    for pad in 185..=200 {
        let text = format!("{}{KEY} trailing", "e".repeat(pad));
        let (err, logs, _) = failing_call(ResponseTemplate::new(500).set_body_string(text)).await;
        assert_no_secret(&err, &format!("text body, pad {pad}"));
        assert_clean(&logs, "text body");

        let sse = format!("event: error\ndata: {}{KEY} more\n\n", "e".repeat(pad));
        let (err, logs, _) =
            failing_call(ResponseTemplate::new(200).set_body_raw(sse, "text/event-stream")).await;
        assert_no_secret(&err, &format!("stream error, pad {pad}"));
        assert_clean(&logs, "stream error");
    }
    let sse = format!(
        "event: error\ndata: {}\n\n",
        json!({"type": "error", "code": KEY, "message": format!("key {KEY}"), "param": KEY})
    );
    let (err, _, _) =
        failing_call(ResponseTemplate::new(200).set_body_raw(sse, "text/event-stream")).await;
    assert_no_secret(&err, "stream error fields");
}

#[tokio::test]
async fn multi_byte_text_at_every_cut_never_panics() {
    for pad in 0..8 {
        let text = format!("{}{}", "a".repeat(pad), "é✓🙂".repeat(200));
        let (err, _, _) =
            failing_call(ResponseTemplate::new(502).set_body_string(text.clone())).await;
        assert_eq!(err.status, Some(502));
        let (err, _, _) =
            failing_call(ResponseTemplate::new(200).set_body_raw(text, "application/json")).await;
        assert_eq!(err.kind, ErrorKind::BadResponse);
    }
}

// ---- 2. far-future waits -----------------------------------------------------------------

fn rate_limited(header: &str, value: &str) -> ResponseTemplate {
    ResponseTemplate::new(429)
        .set_body_json(json!({"error": {"message": "slow down", "type": "requests",
            "code": "rate_limit_exceeded"}}))
        .insert_header(header, value)
}

#[tokio::test]
async fn absurd_waits_fail_at_once_and_lock_the_key_out_no_longer_than_the_cap() {
    let rows = [
        ("retry-after", "300000000000"),
        ("retry-after", "9223372036854775807"),
        ("retry-after-ms", "18446744073709551615"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("retry-after", "1e300"),
    ];
    for (header, value) in rows {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(GENERATIONS))
            .respond_with(rate_limited(header, value))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        mount(
            &server,
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": [{"b64_json": b64(&png(4, 4))}]})),
        )
        .await;
        let mut s = settings(&server);
        s.max_retries = 2;
        s.retry_after_cap = Duration::from_secs(1);
        let p = provider(s);
        let started = Instant::now();
        let err = p.generate(&request()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{value}: answered promptly"
        );
        assert_eq!(err.kind, ErrorKind::RateLimited, "{value}: {err}");
        assert!(err.message.contains("retry_after_cap"), "{value}: {err}");
        assert!(err.message.contains("try again after"), "{value}: {err}");
        // The next call waits out at most the cap, then succeeds.
        let started = Instant::now();
        let result = p.generate(&request()).await;
        assert!(result.is_ok(), "{value}: {result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{value}: locked out"
        );
    }
}

// ---- 8. more images than asked for --------------------------------------------------------

#[tokio::test]
async fn more_urls_than_asked_for_are_refused_before_any_download() {
    let server = MockServer::start().await;
    let files = MockServer::start().await;
    let urls: Vec<Value> = (0..200)
        .map(|i| json!({"url": format!("{}/img{i}.png", files.uri())}))
        .collect();
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"data": urls})),
    )
    .await;
    let mut s = settings(&server);
    s.download_hosts = vec![format!("127.0.0.1:{}", files.address().port())];
    let err = provider(s).generate(&request()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(err.message.contains("200"), "{err}");
    assert!(
        files.received_requests().await.unwrap().is_empty(),
        "nothing downloaded"
    );
}

#[tokio::test]
async fn more_b64_images_than_asked_for_are_refused() {
    let server = MockServer::start().await;
    let image = b64(&png(64, 64));
    let data: Vec<Value> = (0..50).map(|_| json!({"b64_json": image})).collect();
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"data": data})),
    )
    .await;
    let err = provider(settings(&server))
        .generate(&request())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(
        err.message.contains("50") && err.message.contains("1"),
        "{err}"
    );
    let mut two = request();
    two.options.n = Some(2);
    let data: Vec<Value> = (0..2).map(|_| json!({"b64_json": image})).collect();
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"data": data})),
    )
    .await;
    let result = provider(settings(&server)).generate(&two).await.unwrap();
    assert_eq!(result.images.len(), 2);
}

// ---- 11. other ports of the base URL's host ------------------------------------------------

#[tokio::test]
async fn result_urls_and_redirects_to_another_port_of_the_same_host_are_refused() {
    let server = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("SECRET-ADMIN-PAGE"))
        .mount(&other)
        .await;
    let elsewhere = format!("http://127.0.0.1:{}/admin", other.address().port());
    Mock::given(method("GET"))
        .and(path("/hop.png"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", elsewhere.as_str()))
        .mount(&server)
        .await;
    let p = provider(settings(&server));
    let hop = format!("http://127.0.0.1:{}/hop.png", server.address().port());
    for url in [elsewhere.as_str(), hop.as_str()] {
        server.reset().await;
        Mock::given(method("GET"))
            .and(path("/hop.png"))
            .respond_with(ResponseTemplate::new(302).insert_header("location", elsewhere.as_str()))
            .mount(&server)
            .await;
        mount(
            &server,
            ResponseTemplate::new(200).set_body_json(json!({"data": [{"url": url}]})),
        )
        .await;
        let err = p.generate(&request()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{url}: {err}");
        assert!(err.message.contains("download_hosts"), "{url}: {err}");
        assert!(!err.message.contains("SECRET-ADMIN"), "{err}");
    }
    assert!(
        other.received_requests().await.unwrap().is_empty(),
        "the other port was reached"
    );
}

#[tokio::test]
async fn a_download_hosts_entry_with_a_port_allows_that_port_only() {
    let server = MockServer::start().await;
    let files = MockServer::start().await;
    let image = png(6, 6);
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.clone(), "image/png"))
        .mount(&files)
        .await;
    let url = format!("http://localhost:{}/x.png", files.address().port());
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"data": [{"url": url}]})),
    )
    .await;
    let mut s = settings(&server);
    s.download_hosts = vec!["localhost".into()];
    let err = provider(s.clone()).generate(&request()).await.unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::BadResponse,
        "a bare host means ports 80 and 443: {err}"
    );
    s.download_hosts = vec![format!("LocalHost:{}", files.address().port())];
    let result = provider(s).generate(&request()).await.unwrap();
    assert_eq!(&result.images[0].bytes[..], &image[..]);
}

// ---- 12. the size is sent as it was checked -------------------------------------------------

#[tokio::test]
async fn the_size_is_sent_normalised() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"data": [{"b64_json": b64(&png(4, 4))}]})),
    )
    .await;
    let p = provider(settings(&server));
    for (given, sent) in [
        ("1024x1024\n", "1024x1024"),
        (" 1536X1024 ", "1536x1024"),
        ("AUTO", "auto"),
    ] {
        let mut r = request();
        r.options.size = Some(given.into());
        p.generate(&r).await.unwrap();
        let last: Vec<Request> = server.received_requests().await.unwrap();
        let body: Value = last.last().unwrap().body_json().unwrap();
        assert_eq!(body["size"], sent, "{given:?}");
    }
}

#[tokio::test]
async fn a_key_echoed_by_a_401_stays_out_of_the_pool_status_and_the_disable_log() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(401)
            .set_body_json(json!({"error": {"message": KEY, "code": KEY, "type": KEY}})),
    )
    .await;
    let s = settings(&server);
    let pool = Arc::clone(&s.keys);
    let logs = Logs::default();
    let guard = tracing::subscriber::set_default(logs.clone());
    let err = provider(s).generate(&request()).await.unwrap_err();
    drop(guard);
    assert_eq!(err.kind, ErrorKind::Auth);
    assert_no_secret(&err, "401");
    assert_clean(&logs.text(), "401 log");
    assert!(logs.text().contains("API key disabled"), "{}", logs.text());
    assert_clean(&format!("{:?}", pool.status()), "pool status");
}

// ---- partial images beyond those asked for -------------------------------------------------

#[tokio::test]
async fn partial_images_beyond_those_asked_for_are_ignored() {
    let server = MockServer::start().await;
    let image = b64(&png(4, 4));
    let mut text: String = (0..5)
        .map(|i| {
            let data = json!({"type": "image_generation.partial_image", "b64_json": image, "partial_image_index": i});
            format!("event: image_generation.partial_image\ndata: {data}\n\n")
        })
        .collect();
    let done = json!({"type": "image_generation.completed", "b64_json": image});
    text += &format!("event: image_generation.completed\ndata: {done}\n\n");
    mount(
        &server,
        ResponseTemplate::new(200).set_body_raw(text, "text/event-stream"),
    )
    .await;
    let mut r = request();
    r.options.partial_images = Some(1);
    let (events, mut rx) = imagegen_providers::Events::channel();
    let result = provider(settings(&server))
        .generate_with_events(&r, &events)
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    drop(events);
    let mut partials = 0;
    while let Some(event) = rx.recv().await {
        if matches!(
            event,
            imagegen_providers::ProviderEvent::PartialImage { .. }
        ) {
            partials += 1;
        }
    }
    assert_eq!(partials, 1);
}

#[tokio::test]
async fn a_download_that_is_not_an_image_is_not_quoted() {
    let server = MockServer::start().await;
    for (name, status) in [("page", None), ("gone", Some(404))] {
        let url = format!("/{name}.png");
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(url.as_str()))
            .respond_with(match status {
                None => ResponseTemplate::new(200).set_body_string("SECRET-ADMIN-PAGE root:x:0:0"),
                Some(s) => ResponseTemplate::new(s).set_body_string("SECRET-ADMIN-PAGE"),
            })
            .mount(&server)
            .await;
        mount(
            &server,
            ResponseTemplate::new(200).set_body_json(json!({"data": [{"url": url}]})),
        )
        .await;
        let err = provider(settings(&server))
            .generate(&request())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("root:x"),
            "{shown}"
        );
        assert_clean(&shown, name);
    }
}
