//! The Replicate provider against a wiremock stub speaking Replicate's predictions API:
//! creation with `Prefer: wait`, polling `urls.get`, outputs downloaded at once, and
//! `urls.cancel` when the call is cancelled, times out or is dropped; the shared conformance
//! suite and rows, then Replicate's own quirks.

use std::{
    io::Cursor,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use imagegen_providers::{
    http::{Poller, RetryPolicy},
    keys::KeyPool,
    replicate::{ReplicateProvider, ReplicateSettings, DEFAULT_MODEL},
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

const KEY: &str = "r8_SENTINEL-token-0123456789";
const PRO: &str = "black-forest-labs/flux-1.1-pro";

fn settings(base: &str) -> ReplicateSettings {
    let keys = KeyPool::new(
        [(SecretString::from(KEY), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = ReplicateSettings::new(format!("{base}/v1").parse().unwrap(), Arc::new(keys));
    s.timeout = Duration::from_secs(10);
    s.retry = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    s.poll = Poller::new(Duration::from_millis(5), Duration::from_millis(20), 2.0);
    s
}

fn replicate(server: &MockServer) -> ReplicateProvider {
    ReplicateProvider::new(settings(&server.uri()), reqwest::Client::new())
}

fn webp(side: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(side, side, image::Rgba([30, 90, 200, 255]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::WebP).unwrap();
    out.into_inner()
}

fn image_in(format: &str) -> (Vec<u8>, &'static str) {
    match format {
        "jpg" => (jpeg(1024, 1024), "image/jpeg"),
        "webp" => (webp(1024), "image/webp"),
        _ => (png(1024, 1024), "image/png"),
    }
}

fn prediction(uri: &str, id: &str, status: &str) -> Value {
    json!({
        "id": id, "model": DEFAULT_MODEL, "version": "hidden", "status": status,
        "input": {}, "logs": "", "error": null, "output": null,
        "created_at": "2026-12-01T10:00:00Z",
        "urls": {
            "get": format!("{uri}/v1/predictions/{id}"),
            "cancel": format!("{uri}/v1/predictions/{id}/cancel"),
            "stream": "https://stream.replicate.com/v1/files/x",
        },
    })
}

/// A stub of Replicate: predictions start, succeed at their first check with as many outputs
/// as `num_outputs` asked for, in the asked format; outputs at `/delivery/`.
async fn stub() -> MockServer {
    let server = MockServer::start().await;
    let uri = server.uri();
    let count = Arc::new(AtomicUsize::new(0));
    let create_uri = uri.clone();
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/models/[^/]+/[^/]+/predictions$"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(move |req: &Request| {
            let body: Value = req.body_json().unwrap();
            let input = &body["input"];
            let n = input["num_outputs"].as_u64().unwrap_or(1);
            let format = input["output_format"].as_str().unwrap_or("webp");
            let id = format!("{format}-{n}-{}", count.fetch_add(1, Ordering::Relaxed));
            ResponseTemplate::new(201).set_body_json(prediction(&create_uri, &id, "starting"))
        })
        .mount(&server)
        .await;
    let get_uri = uri.clone();
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/predictions/[^/]+$"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(move |req: &Request| {
            let id = req.url.path().rsplit('/').next().unwrap().to_string();
            let n: usize = id.split('-').nth(1).unwrap().parse().unwrap();
            let mut answer = prediction(&get_uri, &id, "succeeded");
            answer["output"] = (0..n)
                .map(|i| format!("{get_uri}/delivery/{id}/out-{i}"))
                .collect();
            ResponseTemplate::new(200).set_body_json(answer)
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/delivery/"))
        .respond_with(|req: &Request| {
            let id = req.url.path().split('/').nth(2).unwrap();
            let (bytes, mime) = image_in(id.split('-').next().unwrap());
            ResponseTemplate::new(200).set_body_raw(bytes, mime)
        })
        .mount(&server)
        .await;
    server
}

/// Creation answers prediction `p1`, still starting.
async fn creates_p1(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/models/.*/predictions$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            &server.uri(),
            "p1",
            "starting",
        )))
        .mount(server)
        .await;
}

/// Status checks of `p1` answer `answer`.
async fn p1_is(server: &MockServer, answer: Value) {
    Mock::given(method("GET"))
        .and(path("/v1/predictions/p1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(server)
        .await;
}

/// Cancellations of `p1` are counted.
async fn cancels_p1(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v1/predictions/p1/cancel"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server.uri(),
            "p1",
            "canceled",
        )))
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
    let calls = conformance(&replicate(&server)).await;
    assert!(calls >= 4, "{calls}");
}

#[tokio::test]
async fn a_prediction_finished_within_the_wait_is_downloaded_with_no_poll() {
    let server = MockServer::start().await;
    let mut done = prediction(&server.uri(), "p1", "succeeded");
    done["output"] = format!("{}/delivery/png-1-0/out.png", server.uri()).into();
    Mock::given(method("POST"))
        .and(path(format!("/v1/models/{PRO}/predictions")))
        .and(header("prefer", "wait=5"))
        .respond_with(ResponseTemplate::new(201).set_body_json(done))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/delivery/png-1-0/out.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(png(64, 48), "image/png"))
        .mount(&server)
        .await;
    let mut request = GenerateRequest::new("a lighthouse", PRO);
    request.options.aspect_ratio = Some("4:3".into());
    request.options.seed = Some(3);
    let result = replicate(&server).generate(&request).await.unwrap();
    assert_eq!((result.images[0].width, result.images[0].height), (64, 48));
    assert_eq!(result.request_id.as_deref(), Some("p1"));
    let sent: Value = requests(&server, "POST", "/predictions").await[0]
        .body_json()
        .unwrap();
    assert_eq!(
        sent,
        json!({"input": {"prompt": "a lighthouse", "aspect_ratio": "4:3", "seed": 3, "output_format": "png"}})
    );
    assert_eq!(result.sent["aspect_ratio"], "4:3");
    assert_eq!(result.sent["model"], PRO);
    assert!(requests(&server, "GET", "/v1/predictions").await.is_empty());
}

#[tokio::test]
async fn the_wait_asked_for_ends_before_the_calls_deadline() {
    let server = stub().await;
    let mut s = settings(&server.uri());
    s.timeout = Duration::from_secs(120);
    s.deadline = Duration::from_secs(30);
    let provider = ReplicateProvider::new(s, reqwest::Client::new());
    provider
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap();
    let create = &requests(&server, "POST", "/predictions").await[0];
    let wait: u64 = create.headers["prefer"]
        .to_str()
        .unwrap()
        .strip_prefix("wait=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((20..=25).contains(&wait), "{wait}");
}

#[tokio::test]
async fn a_status_check_failing_transiently_is_checked_again() {
    let server = stub().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/predictions/"))
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({"detail": "busy"})))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    let result = replicate(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    assert!(requests(&server, "POST", "/cancel").await.is_empty());
}

#[tokio::test]
async fn a_running_prediction_is_polled_with_its_progress() {
    let server = stub().await;
    let uri = server.uri();
    let mut running = prediction(&uri, "png-1-0", "processing");
    running["logs"] = " 20%|██        | 2/10\n 45%|████▌     | 4/10".into();
    Mock::given(method("GET"))
        .and(path("/v1/predictions/png-1-0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(running))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    let (events_tx, mut rx) = Events::channel();
    let result = replicate(&server)
        .generate_opts(
            &GenerateRequest::new("x", DEFAULT_MODEL),
            &CallOptions::new().with_events(events_tx),
        )
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    let mut pending = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let ProviderEvent::Pending { status, .. } = event {
            pending.push(status.unwrap_or_default());
        }
    }
    assert_eq!(pending, ["processing (45%)", "processing (45%)"]);
}

#[tokio::test]
async fn n_is_the_models_own_input_or_that_many_predictions_at_once() {
    let server = stub().await;
    let mut request = GenerateRequest::new("x", DEFAULT_MODEL);
    request.options.n = Some(3);
    let result = replicate(&server).generate(&request).await.unwrap();
    assert_eq!(result.images.len(), 3);
    assert_eq!(requests(&server, "POST", "/predictions").await.len(), 1);
    assert_eq!(result.sent["num_outputs"], 3);

    let server = stub().await;
    let mut request = GenerateRequest::new("x", PRO);
    request.options.n = Some(2);
    request.options.seed = Some(5);
    let result = replicate(&server).generate(&request).await.unwrap();
    assert_eq!(result.images.len(), 2);
    let mut seeds: Vec<i64> = requests(&server, "POST", "/predictions")
        .await
        .iter()
        .map(|r| {
            r.body_json::<Value>().unwrap()["input"]["seed"]
                .as_i64()
                .unwrap()
        })
        .collect();
    seeds.sort();
    assert_eq!(seeds, [5, 6]);
    assert_eq!(result.sent["predictions"], 2);
}

#[tokio::test]
async fn an_edit_sends_its_image_as_a_data_uri() {
    let server = stub().await;
    let source = InputImage::new(png(32, 32), ImageFormat::Png, "in.png");
    let request = EditRequest::new(
        "make it blue",
        "black-forest-labs/flux-kontext-pro",
        vec![source],
    );
    let result = replicate(&server).edit(&request).await.unwrap();
    assert_eq!(result.images.len(), 1);
    let sent: Value = requests(&server, "POST", "/predictions").await[0]
        .body_json()
        .unwrap();
    assert_eq!(
        sent["input"]["input_image"],
        format!("data:image/png;base64,{}", b64(&png(32, 32)))
    );
    assert_eq!(result.sent["input_images"], 1);
    assert!(!result.sent.contains_key("input_image"));
}

#[tokio::test]
async fn failed_and_canceled_predictions_say_why_scrubbed_and_capped() {
    let server = MockServer::start().await;
    creates_p1(&server).await;
    let mut failed = prediction(&server.uri(), "p1", "failed");
    failed["error"] = format!("CUDA out of memory with token {KEY} {}", "x".repeat(2000)).into();
    p1_is(&server, failed).await;
    let err = replicate(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable, "{err}");
    assert!(!err.retryable && err.request_sent);
    assert!(err.message.contains("CUDA out of memory"), "{err}");
    assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err}");
    assert!(err.message.len() < 800, "{}", err.message.len());
    assert_eq!(requests(&server, "POST", "/predictions").await.len(), 1);

    for (status, error, kind) in [
        (
            "failed",
            "NSFW content detected. Try a different prompt.",
            ErrorKind::ContentPolicy,
        ),
        ("canceled", "", ErrorKind::Cancelled),
    ] {
        let server = MockServer::start().await;
        creates_p1(&server).await;
        let mut answer = prediction(&server.uri(), "p1", status);
        answer["error"] = error.into();
        p1_is(&server, answer).await;
        let err = replicate(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, kind, "{status}: {err}");
        // It ended at Replicate: nothing to cancel.
        assert!(requests(&server, "POST", "/cancel").await.is_empty());
    }
}

#[tokio::test]
async fn http_errors_are_classified_with_retry_hints_and_never_show_the_token() {
    for (status, kind) in [
        (401, ErrorKind::Auth),
        (402, ErrorKind::QuotaExhausted),
        (422, ErrorKind::InvalidRequest),
        (429, ErrorKind::RateLimited),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "7")
                    .set_body_json(json!({
                        "type": "about:blank", "title": "Error", "status": status,
                        "detail": format!("problem with {KEY}"),
                    })),
            )
            .mount(&server)
            .await;
        let err = replicate(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!((err.kind, err.status), (kind, Some(status)), "{err}");
        assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err}");
        if status == 429 {
            assert!(err.retryable);
            assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        } else {
            assert!(!err.retryable, "{status}");
        }
    }
}

#[tokio::test]
async fn malformed_answers_are_bad_responses() {
    for answer in [
        ResponseTemplate::new(201).set_body_string("{\"id\": "),
        ResponseTemplate::new(201).set_body_json(json!({"id": "p1"})),
        ResponseTemplate::new(201)
            .set_body_json(json!({"id": "p1", "status": "succeeded", "output": 42})),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let err = replicate(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    }
}

#[tokio::test]
async fn reaching_the_deadline_cancels_the_prediction_at_replicate() {
    let server = MockServer::start().await;
    creates_p1(&server).await;
    p1_is(&server, prediction(&server.uri(), "p1", "processing")).await;
    cancels_p1(&server).await;
    let mut s = settings(&server.uri());
    s.deadline = Duration::from_millis(300);
    let err = ReplicateProvider::new(s, reqwest::Client::new())
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_eq!(
        requests(&server, "POST", "/v1/predictions/p1/cancel")
            .await
            .len(),
        1
    );
    assert_eq!(requests(&server, "POST", "/models/").await.len(), 1);
}

#[tokio::test]
async fn cancelling_mid_poll_cancels_the_prediction_at_replicate() {
    let server = MockServer::start().await;
    creates_p1(&server).await;
    p1_is(&server, prediction(&server.uri(), "p1", "processing")).await;
    cancels_p1(&server).await;
    let (events_tx, mut rx) = Events::channel();
    let cancel = CancellationToken::new();
    let options = CallOptions::new()
        .with_events(events_tx)
        .with_cancel(cancel.clone());
    let provider = replicate(&server);
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
    // Cancelled before the call returned, with the token.
    assert_eq!(
        requests(&server, "POST", "/v1/predictions/p1/cancel")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn dropping_the_call_mid_poll_still_cancels_the_prediction() {
    let server = MockServer::start().await;
    creates_p1(&server).await;
    p1_is(&server, prediction(&server.uri(), "p1", "processing")).await;
    cancels_p1(&server).await;
    let provider = replicate(&server);
    let request = GenerateRequest::new("x", DEFAULT_MODEL);
    let (events_tx, mut rx) = Events::channel();
    let options = CallOptions::new().with_events(events_tx);
    {
        let call = provider.generate_opts(&request, &options);
        tokio::pin!(call);
        loop {
            tokio::select! {
                _ = &mut call => panic!("the call ended"),
                Some(event) = rx.recv() => if matches!(event, ProviderEvent::Pending { .. }) { break },
            }
        }
    }
    // The cancellation is sent in the background: wait for it to arrive.
    let mut arrived = false;
    for _ in 0..500 {
        if !requests(&server, "POST", "/v1/predictions/p1/cancel")
            .await
            .is_empty()
        {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(arrived, "no cancel request arrived");
}

#[tokio::test]
async fn output_urls_at_internal_addresses_are_refused_without_connecting() {
    for url in [
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::ffff:10.0.0.1]/",
    ] {
        let server = MockServer::start().await;
        let mut done = prediction(&server.uri(), "p1", "succeeded");
        done["output"] = json!([url]);
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_json(done))
            .mount(&server)
            .await;
        let mut s = settings(&server.uri());
        s.download_hosts = vec![
            "10.1.2.3".into(),
            "169.254.169.254".into(),
            "[::ffff:a00:1]".into(),
        ];
        let started = std::time::Instant::now();
        let err = ReplicateProvider::new(s, reqwest::Client::new())
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{url}: {err}");
        assert!(err.message.contains("public addresses"), "{url}: {err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn an_expired_output_url_is_a_clear_error_naming_the_hour() {
    let server = MockServer::start().await;
    let mut done = prediction(&server.uri(), "p1", "succeeded");
    done["output"] = json!([format!("{}/delivery/gone.png", server.uri())]);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(done))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/delivery/gone.png"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let err = replicate(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.status),
        (ErrorKind::BadResponse, Some(404)),
        "{err}"
    );
    assert!(err.message.contains("one hour"), "{err}");
}

#[tokio::test]
async fn prediction_urls_on_another_host_are_never_sent_the_token() {
    let server = MockServer::start().await;
    let mut answer = prediction(&server.uri(), "p1", "starting");
    answer["urls"]["get"] = "https://collector.example.com/p1".into();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(answer))
        .mount(&server)
        .await;
    let err = replicate(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(err.message.contains("collector.example.com"), "{err}");
}

/// Replicate's wire format for the shared rows: a prediction that succeeded within the wait
/// (one request), its outputs inline.
struct ReplicateStub;

impl ConformanceStub for ReplicateStub {
    fn model(&self) -> &str {
        DEFAULT_MODEL
    }

    fn answer_ok(&self, n: usize) -> Reply {
        let url = format!("data:image/png;base64,{}", b64(&png(8, 8)));
        Reply::json(&json!({
            "id": "p1", "status": "succeeded", "output": vec![url; n], "error": null,
        }))
        .status(201)
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let body = match fault {
            Fault::Field {
                field: "message",
                value,
            } => {
                json!({"title": "Error", "status": status, "detail": value})
            }
            Fault::Field { value, .. } => json!({"title": value, "status": status}),
            Fault::Refusal => json!({
                "title": "Input flagged", "status": status,
                "detail": "NSFW content detected in the prompt",
            }),
        };
        Reply::error(status, &body).header("content-type", "application/problem+json")
    }

    fn answer_urls(&self, urls: &[String]) -> Option<Reply> {
        Some(Reply::json(&json!({"id": "p1", "status": "succeeded", "output": urls})).status(201))
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        None
    }
}

fn replicate_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let keys = KeyPool::new(
        [(SecretString::from(target.key), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = ReplicateSettings::new(target.base_url, Arc::new(keys));
    s.timeout = target.timeout;
    s.retry = RetryPolicy {
        max_retries: 0,
        retry_after_cap: target.retry_after_cap,
        ..RetryPolicy::default()
    };
    Box::new(ReplicateProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn the_provider_passes_the_shared_error_rows() {
    error_rows(&replicate_against, &ReplicateStub).await;
}

#[tokio::test]
async fn the_provider_withstands_the_shared_hostile_rows() {
    hostile_rows(&replicate_against, &ReplicateStub).await;
}

#[tokio::test]
async fn the_configured_kind_builds_and_serves_against_the_stub() {
    use imagegen_providers::{
        build::{BuildContext, KindConfig, ProviderConfig},
        http::ClientCache,
        replicate,
    };
    let server = stub().await;
    let kind = KindConfig::Replicate(replicate::Config {
        base_url: format!("{}/v1", server.uri()),
        poll_interval_ms: 5,
        poll_max_interval_ms: 20,
        wait_s: 0,
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
