//! The fal provider against a wiremock stub speaking fal's queue API: submit with
//! `Authorization: Key`, poll `status_url` (queue position as progress), fetch
//! `response_url`, download the images at once, `PUT cancel_url` when the call is abandoned;
//! the shared conformance suite and rows, then fal's own quirks.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use imagegen_providers::{
    fal::{FalProvider, FalSettings, DEFAULT_MODEL},
    http::{Poller, RetryPolicy},
    keys::KeyPool,
    testing::{conformance, error_rows, hostile_rows, ConformanceStub, Fault, StubTarget},
    CallOptions, EditRequest, ErrorKind, Events, GenerateRequest, ImageFormat, ImageProvider,
    ImageProviderExt as _, InputImage, ProviderEvent,
};
use imagegen_testkit::{
    img::{b64, jpeg, png},
    Reply,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wiremock::{
    matchers::{header, method, path, path_regex},
    Mock, MockServer, Request, ResponseTemplate,
};

const KEY: &str = "fal-SENTINEL-id:secret-0123456789";
const KONTEXT: &str = "fal-ai/flux-pro/kontext";

fn settings(base: &str) -> FalSettings {
    let keys = KeyPool::new(
        [(SecretString::from(KEY), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = FalSettings::new(base.parse().unwrap(), Arc::new(keys));
    s.timeout = Duration::from_secs(5);
    s.retry = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    s.poll = Poller::new(Duration::from_millis(5), Duration::from_millis(20), 2.0);
    s
}

fn fal(server: &MockServer) -> FalProvider {
    FalProvider::new(settings(&server.uri()), reqwest::Client::new())
}

fn auth() -> String {
    format!("Key {KEY}")
}

fn queued(uri: &str, app: &str, id: &str) -> Value {
    let requests = format!("{uri}/{app}/requests/{id}");
    json!({
        "request_id": id, "gateway_request_id": id, "status": "IN_QUEUE", "queue_position": 0,
        "status_url": format!("{requests}/status"),
        "response_url": requests,
        "cancel_url": format!("{requests}/cancel"),
    })
}

/// Request ids carry what was asked: size, format and count.
fn request_id(input: &Value, n: usize) -> String {
    let w = input["image_size"]["width"].as_u64().unwrap_or(1024);
    let h = input["image_size"]["height"].as_u64().unwrap_or(1024);
    let format = input["output_format"].as_str().unwrap_or("jpeg");
    let count = input["num_images"].as_u64().unwrap_or(1);
    format!("{w}x{h}-{format}-{count}-{n}")
}

/// A stub of fal's queue: requests complete at their first status check.
async fn stub() -> MockServer {
    let server = MockServer::start().await;
    let uri = server.uri();
    let counter = Arc::new(AtomicUsize::new(0));
    let submit_uri = uri.clone();
    Mock::given(method("POST"))
        .and(path_regex(r"^/fal-ai/[^/]+(/[^/]+)?$"))
        .and(header("authorization", auth().as_str()))
        .respond_with(move |req: &Request| {
            let input: Value = req.body_json().unwrap();
            let id = request_id(&input, counter.fetch_add(1, Ordering::Relaxed));
            let app = req
                .url
                .path()
                .split('/')
                .take(3)
                .collect::<Vec<_>>()
                .join("/");
            ResponseTemplate::new(200).set_body_json(queued(&submit_uri, &app[1..], &id))
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/fal-ai/[^/]+/requests/[^/]+/status$"))
        .and(header("authorization", auth().as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETED", "logs": []})),
        )
        .mount(&server)
        .await;
    let result_uri = uri.clone();
    Mock::given(method("GET"))
        .and(path_regex(r"^/fal-ai/[^/]+/requests/[^/]+$"))
        .and(header("authorization", auth().as_str()))
        .respond_with(move |req: &Request| {
            let id = req.url.path().rsplit('/').next().unwrap();
            let parts: Vec<&str> = id.split('-').collect();
            let n: usize = parts[2].parse().unwrap();
            let images: Vec<Value> = (0..n)
                .map(|i| json!({"url": format!("{result_uri}/files/{id}/{i}"), "content_type": "image/png"}))
                .collect();
            ResponseTemplate::new(200).set_body_json(json!({
                "images": images, "seed": 1, "has_nsfw_concepts": vec![false; n],
                "timings": {"inference": 0.3}, "prompt": "x",
            }))
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/files/"))
        .respond_with(|req: &Request| {
            let id = req.url.path().split('/').nth(2).unwrap();
            let parts: Vec<&str> = id.split('-').collect();
            let (w, h) = parts[0].split_once('x').unwrap();
            let (w, h) = (w.parse().unwrap(), h.parse().unwrap());
            match parts[1] {
                "png" => ResponseTemplate::new(200).set_body_raw(png(w, h), "image/png"),
                _ => ResponseTemplate::new(200).set_body_raw(jpeg(w, h), "image/jpeg"),
            }
        })
        .mount(&server)
        .await;
    server
}

/// Submissions answer request `r1` of `fal-ai/flux`.
async fn submits_r1(server: &MockServer) {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(
            &server.uri(),
            "fal-ai/flux",
            "r1",
        )))
        .mount(server)
        .await;
}

async fn r1_status(server: &MockServer, answer: Value) {
    Mock::given(method("GET"))
        .and(path("/fal-ai/flux/requests/r1/status"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(server)
        .await;
}

async fn r1_result(server: &MockServer, answer: Value) {
    Mock::given(method("GET"))
        .and(path("/fal-ai/flux/requests/r1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(server)
        .await;
}

async fn cancels_r1(server: &MockServer) {
    Mock::given(method("PUT"))
        .and(path("/fal-ai/flux/requests/r1/cancel"))
        .and(header("authorization", auth().as_str()))
        .respond_with(
            ResponseTemplate::new(202).set_body_json(json!({"status": "CANCELLATION_REQUESTED"})),
        )
        .mount(server)
        .await;
}

async fn requests(server: &MockServer, method: &str, path_part: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == method && r.url.path().contains(path_part))
        .collect()
}

#[tokio::test]
async fn the_provider_passes_the_conformance_suite_against_the_stub() {
    let server = stub().await;
    let calls = conformance(&fal(&server)).await;
    // One image, two, and JPEG; the default model does not edit.
    assert_eq!(calls, 3);
}

#[tokio::test]
async fn a_request_is_polled_with_its_queue_position_then_fetched_and_downloaded() {
    let server = stub().await;
    Mock::given(method("GET"))
        .and(path_regex(r"/status$"))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(json!({"status": "IN_QUEUE", "queue_position": 2})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"/status$"))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({
            "status": "IN_PROGRESS",
            "logs": [{"message": "step 1/4", "level": "INFO"}, {"message": "step 3/4", "level": "INFO"}],
        })))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    let (events_tx, mut rx) = Events::channel();
    let mut request = GenerateRequest::new("a lighthouse", DEFAULT_MODEL);
    request.options.size = Some("1024x768".into());
    request.options.seed = Some(9);
    let result = fal(&server)
        .generate_opts(&request, &CallOptions::new().with_events(events_tx))
        .await
        .unwrap();
    assert_eq!(
        (result.images[0].width, result.images[0].height),
        (1024, 768)
    );
    let mut pending = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let ProviderEvent::Pending { status, .. } = event {
            pending.push(status.unwrap_or_default());
        }
    }
    assert_eq!(
        pending,
        ["IN_QUEUE (queue position 2)", "IN_PROGRESS: step 3/4"]
    );
    let sent: Value = requests(&server, "POST", "/fal-ai/flux/schnell").await[0]
        .body_json()
        .unwrap();
    assert_eq!(
        sent,
        json!({"prompt": "a lighthouse", "image_size": {"width": 1024, "height": 768},
               "num_images": 1, "seed": 9, "output_format": "png"})
    );
    assert_eq!(result.sent["image_size"]["width"], 1024);
    assert_eq!(result.sent["model"], DEFAULT_MODEL);
    // Status is asked with logs, at the URL fal returned.
    let status = &requests(&server, "GET", "/status").await[0];
    assert_eq!(status.url.query(), Some("logs=1"));
}

#[tokio::test]
async fn an_edit_sends_its_image_as_a_data_uri_to_the_subpath_and_polls_the_app() {
    let server = stub().await;
    let source = InputImage::new(png(32, 32), ImageFormat::Png, "in.png");
    let mut request = EditRequest::new("make it blue", KONTEXT, vec![source]);
    request.options.aspect_ratio = Some("1:1".into());
    let result = fal(&server).edit(&request).await.unwrap();
    assert_eq!(result.images.len(), 1);
    let sent: Value = requests(&server, "POST", "/fal-ai/flux-pro/kontext").await[0]
        .body_json()
        .unwrap();
    assert_eq!(
        sent["image_url"],
        format!("data:image/png;base64,{}", b64(&png(32, 32)))
    );
    assert_eq!(sent["aspect_ratio"], "1:1");
    assert!(!result.sent.contains_key("image_url"));
    // The subpath is used on submit only.
    assert!(!requests(&server, "GET", "/fal-ai/flux-pro/requests/")
        .await
        .is_empty());
}

#[tokio::test]
async fn a_status_check_failing_transiently_is_checked_again() {
    let server = stub().await;
    Mock::given(method("GET"))
        .and(path_regex(r"/status$"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"detail": "slow down"})))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    let result = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
}

#[tokio::test]
async fn a_synchronous_answer_needs_no_polling() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "images": [{"url": format!("{}/files/x.png", server.uri()), "width": 16, "height": 16}],
            "seed": 1, "has_nsfw_concepts": [false],
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/x.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(png(16, 16), "image/png"))
        .mount(&server)
        .await;
    let result = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn safety_blocks_are_content_policy() {
    // Flagged by the safety checker: the image came back black.
    let server = MockServer::start().await;
    submits_r1(&server).await;
    r1_status(&server, json!({"status": "COMPLETED"})).await;
    r1_result(
        &server,
        json!({"images": [{"url": "https://v3.fal.media/files/black.png"}], "has_nsfw_concepts": [true]}),
    )
    .await;
    let err = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContentPolicy, "{err}");
    assert!(err.message.contains("safety checker"), "{err}");
    // Refused at the result: a 422 naming a content policy violation.
    let server = MockServer::start().await;
    submits_r1(&server).await;
    r1_status(&server, json!({"status": "COMPLETED"})).await;
    Mock::given(method("GET"))
        .and(path("/fal-ai/flux/requests/r1"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"detail": [
            {"loc": ["body", "prompt"], "msg": "The prompt was flagged", "type": "content_policy_violation"}
        ]})))
        .mount(&server)
        .await;
    let err = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.status),
        (ErrorKind::ContentPolicy, Some(422)),
        "{err}"
    );
    assert!(!err.retryable && err.request_sent);
}

#[tokio::test]
async fn http_errors_are_classified_with_retry_hints_and_never_show_the_key() {
    for (status, detail, kind) in [
        (401, format!("invalid key {KEY}"), ErrorKind::Auth),
        (
            403,
            "User is locked. Reason: Exhausted balance.".to_string(),
            ErrorKind::QuotaExhausted,
        ),
        (429, "Too many requests".to_string(), ErrorKind::RateLimited),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "4")
                    .set_body_json(json!({"detail": detail})),
            )
            .mount(&server)
            .await;
        let err = fal(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!((err.kind, err.status), (kind, Some(status)), "{err}");
        assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err}");
        if status == 429 {
            assert_eq!(err.retry_after, Some(Duration::from_secs(4)));
        }
    }
}

#[tokio::test]
async fn malformed_answers_and_failed_requests_are_clear_errors() {
    for answer in [
        ResponseTemplate::new(200).set_body_string("{\"request_id\": "),
        ResponseTemplate::new(200).set_body_json(json!({"status": "IN_QUEUE"})),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let err = fal(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    }
    let server = MockServer::start().await;
    submits_r1(&server).await;
    r1_status(
        &server,
        json!({"status": "COMPLETED", "error": "Internal error in the model", "error_type": "runner_error"}),
    )
    .await;
    let err = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable, "{err}");
    assert_eq!(err.provider_code.as_deref(), Some("runner_error"));
    assert!(requests(&server, "PUT", "/cancel").await.is_empty());
}

#[tokio::test]
async fn reaching_the_deadline_cancels_the_queued_request() {
    let server = MockServer::start().await;
    submits_r1(&server).await;
    r1_status(&server, json!({"status": "IN_QUEUE", "queue_position": 40})).await;
    cancels_r1(&server).await;
    let mut s = settings(&server.uri());
    s.deadline = Duration::from_millis(1200);
    let err = FalProvider::new(s, reqwest::Client::new())
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(err.message.contains("queue position 40"), "{err}");
    assert_eq!(
        requests(&server, "PUT", "/fal-ai/flux/requests/r1/cancel")
            .await
            .len(),
        1
    );
    assert_eq!(requests(&server, "POST", "/").await.len(), 1);
}

#[tokio::test]
async fn cancelling_mid_poll_cancels_the_request_at_fal() {
    let server = MockServer::start().await;
    submits_r1(&server).await;
    r1_status(&server, json!({"status": "IN_QUEUE", "queue_position": 3})).await;
    cancels_r1(&server).await;
    let (events_tx, mut rx) = Events::channel();
    let cancel = CancellationToken::new();
    let options = CallOptions::new()
        .with_events(events_tx)
        .with_cancel(cancel.clone());
    let provider = fal(&server);
    let request = GenerateRequest::new("x", DEFAULT_MODEL);
    let call = provider.generate_opts(&request, &options);
    let cancel_after_pending = async {
        while let Some(event) = rx.recv().await {
            if matches!(event, ProviderEvent::Pending { .. }) {
                cancel.cancel();
                break;
            }
        }
    };
    let (outcome, ()) = tokio::join!(call, cancel_after_pending);
    assert_eq!(outcome.unwrap_err().kind, ErrorKind::Cancelled);
    assert_eq!(
        requests(&server, "PUT", "/fal-ai/flux/requests/r1/cancel")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn output_urls_at_internal_addresses_are_refused_without_connecting() {
    for url in [
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::ffff:10.0.0.1]/",
    ] {
        let server = MockServer::start().await;
        submits_r1(&server).await;
        r1_status(&server, json!({"status": "COMPLETED"})).await;
        r1_result(
            &server,
            json!({"images": [{"url": url}], "has_nsfw_concepts": [false]}),
        )
        .await;
        let mut s = settings(&server.uri());
        s.download_hosts = vec![
            "10.1.2.3".into(),
            "169.254.169.254".into(),
            "[::ffff:a00:1]".into(),
        ];
        let started = std::time::Instant::now();
        let err = FalProvider::new(s, reqwest::Client::new())
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{url}: {err}");
        assert!(err.message.contains("public addresses"), "{url}: {err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn an_expired_output_url_is_a_clear_error() {
    let server = MockServer::start().await;
    submits_r1(&server).await;
    r1_status(&server, json!({"status": "COMPLETED"})).await;
    r1_result(
        &server,
        json!({"images": [{"url": format!("{}/files/gone.png", server.uri())}]}),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/files/gone.png"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&server)
        .await;
    let err = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.status),
        (ErrorKind::BadResponse, Some(403)),
        "{err}"
    );
    assert!(err.message.contains("expired"), "{err}");
}

#[tokio::test]
async fn queue_urls_on_another_host_are_never_sent_the_key() {
    let server = MockServer::start().await;
    let mut answer = queued(&server.uri(), "fal-ai/flux", "r1");
    answer["status_url"] = "https://collector.example.com/status".into();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&server)
        .await;
    let err = fal(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(err.message.contains("collector.example.com"), "{err}");
}

/// fal's wire format for the shared rows: the synchronous answer (one request), images inline.
struct FalStub;

impl ConformanceStub for FalStub {
    fn model(&self) -> &str {
        DEFAULT_MODEL
    }

    fn answer_ok(&self, n: usize) -> Reply {
        let image = json!({"url": format!("data:image/png;base64,{}", b64(&png(8, 8))),
                           "width": 8, "height": 8, "content_type": "image/png"});
        Reply::json(
            &json!({"images": vec![image; n], "seed": 1, "has_nsfw_concepts": vec![false; n]}),
        )
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let body = match fault {
            Fault::Field {
                field: "message",
                value,
            } => json!({"detail": value}),
            Fault::Field { field, value } => {
                json!({"detail": [{"loc": ["body", field], "msg": value, "type": value}]})
            }
            Fault::Refusal => json!({"detail": [{"loc": ["body", "prompt"], "msg": "flagged",
                                                  "type": "content_policy_violation"}]}),
        };
        Reply::error(status, &body)
    }

    fn answer_urls(&self, urls: &[String]) -> Option<Reply> {
        let images: Vec<Value> = urls.iter().map(|u| json!({"url": u})).collect();
        Some(Reply::json(&json!({"images": images})))
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        None
    }
}

fn fal_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let keys = KeyPool::new(
        [(SecretString::from(target.key), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = FalSettings::new(target.base_url, Arc::new(keys));
    s.timeout = target.timeout;
    s.retry = RetryPolicy {
        max_retries: 0,
        retry_after_cap: target.retry_after_cap,
        ..RetryPolicy::default()
    };
    Box::new(FalProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn the_provider_passes_the_shared_error_rows() {
    error_rows(&fal_against, &FalStub).await;
}

#[tokio::test]
async fn the_provider_withstands_the_shared_hostile_rows() {
    hostile_rows(&fal_against, &FalStub).await;
}

#[tokio::test]
async fn the_configured_kind_builds_and_serves_against_the_stub() {
    use imagegen_providers::{
        build::{BuildContext, KindConfig, ProviderConfig},
        fal,
        http::ClientCache,
    };
    let server = stub().await;
    let kind = KindConfig::Fal(fal::Config {
        base_url: server.uri(),
        poll_interval_ms: 5,
        poll_max_interval_ms: 20,
    });
    let mut config = ProviderConfig::of(kind);
    config.check().unwrap();
    assert_eq!(config.model(), DEFAULT_MODEL);
    assert!(config.kind.catalog().get(DEFAULT_MODEL).known);
    config.http.timeout_s = 10;
    let keys = KeyPool::new(
        [(SecretString::from(KEY), "test".to_string())],
        Duration::from_secs(600),
    );
    let clients = ClientCache::default();
    let provider = config
        .build(BuildContext {
            keys: Arc::new(keys),
            catalog: Arc::new(config.kind.catalog()),
            clients: &clients,
        })
        .unwrap();
    assert_eq!(provider.default_model(), DEFAULT_MODEL);
    let result = provider
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
}
