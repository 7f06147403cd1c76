//! The BFL (FLUX) provider against a wiremock stub speaking BFL's API: submit with `x-key`,
//! poll the returned `polling_url`, download `result.sample` at once; the shared conformance
//! suite and rows, then BFL's own quirks (moderation statuses, 402, regional polling hosts,
//! expired and internal result URLs, cancellation mid-poll).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use imagegen_providers::{
    bfl::{BflProvider, BflSettings, DEFAULT_MODEL},
    http::{Poller, RetryPolicy},
    keys::KeyPool,
    testing::{conformance, error_rows, hostile_rows, ConformanceStub, Fault, StubTarget},
    CallOptions, EditRequest, ErrorKind, Events, GenerateRequest, ImageFormat, ImageProvider,
    ImageProviderExt as _, InputImage, ProviderEvent,
};
use imagegen_testkit::{
    img::{b64, jpeg, png, unb64},
    Reply,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wiremock::{
    matchers::{header, method, path, path_regex},
    Mock, MockServer, Request, ResponseTemplate,
};

const KEY: &str = "bfl-SENTINEL-key-0123456789";

fn settings(base: &str) -> BflSettings {
    let keys = KeyPool::new(
        [(SecretString::from(KEY), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = BflSettings::new(format!("{base}/v1").parse().unwrap(), Arc::new(keys));
    s.timeout = Duration::from_secs(5);
    s.retry = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    s.poll = Poller::new(Duration::from_millis(5), Duration::from_millis(20), 2.0);
    s
}

fn bfl(server: &MockServer) -> BflProvider {
    BflProvider::new(settings(&server.uri()), reqwest::Client::new())
}

/// Task ids carry what was asked, so the stub serves an image of that size and format.
fn task_id(body: &Value, n: usize) -> String {
    let w = body["width"].as_u64().unwrap_or(1024);
    let h = body["height"].as_u64().unwrap_or(1024);
    let format = body["output_format"].as_str().unwrap_or("jpeg");
    format!("{w}x{h}-{format}-{n}")
}

fn image_for(id: &str) -> (Vec<u8>, &'static str) {
    let mut parts = id.split('-');
    let (w, h) = parts.next().unwrap().split_once('x').unwrap();
    let (w, h) = (w.parse().unwrap(), h.parse().unwrap());
    match parts.next().unwrap() {
        "png" => (png(w, h), "image/png"),
        _ => (jpeg(w, h), "image/jpeg"),
    }
}

/// A stub of BFL's API: submissions on `/v1/{model}`, tasks Ready at `/v1/get_result`, results
/// on `/delivery/{id}`.
async fn stub() -> MockServer {
    let server = MockServer::start().await;
    let uri = server.uri();
    let count = Arc::new(AtomicUsize::new(0));
    let submit_uri = uri.clone();
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/[a-z0-9.-]+$"))
        .and(header("x-key", KEY))
        .respond_with(move |req: &Request| {
            let body: Value = req.body_json().unwrap();
            let id = task_id(&body, count.fetch_add(1, Ordering::Relaxed));
            ResponseTemplate::new(200).set_body_json(json!({
                "id": id,
                "polling_url": format!("{submit_uri}/v1/get_result?id={id}"),
                "cost": 3.0, "input_mp": 0.0, "output_mp": 1.0,
            }))
        })
        .mount(&server)
        .await;
    let poll_uri = uri.clone();
    Mock::given(method("GET"))
        .and(path("/v1/get_result"))
        .and(header("x-key", KEY))
        .respond_with(move |req: &Request| {
            let id = req
                .url
                .query_pairs()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.into_owned())
                .unwrap();
            ResponseTemplate::new(200).set_body_json(json!({
                "id": id, "status": "Ready",
                "result": {"sample": format!("{poll_uri}/delivery/{id}"), "seed": 42,
                           "start_time": 1.0, "end_time": 2.0, "duration": 1.0},
            }))
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/delivery/"))
        .respond_with(|req: &Request| {
            let id = req.url.path().trim_start_matches("/delivery/");
            let (bytes, mime) = image_for(id);
            ResponseTemplate::new(200).set_body_raw(bytes, mime)
        })
        .mount(&server)
        .await;
    server
}

/// Mounts a submission answering task `t1`, polled at the stub itself.
async fn submits_t1(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v1/flux-2-pro"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "t1", "polling_url": format!("{}/v1/get_result?id=t1", server.uri()),
        })))
        .mount(server)
        .await;
}

/// Mounts a status answer for task `t1`.
async fn status(server: &MockServer, answer: Value) {
    Mock::given(method("GET"))
        .and(path("/v1/get_result"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(server)
        .await;
}

fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>) -> Vec<ProviderEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}

async fn posts(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| r.body_json().unwrap())
        .collect()
}

#[tokio::test]
async fn the_provider_passes_the_conformance_suite_against_the_stub() {
    let server = stub().await;
    let calls = conformance(&bfl(&server)).await;
    assert!(calls >= 4, "{calls}");
}

#[tokio::test]
async fn a_task_is_submitted_with_the_key_polled_with_progress_and_downloaded() {
    let server = MockServer::start().await;
    submits_t1(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1/get_result"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "t1", "status": "Pending", "progress": 0.4})),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    status(
        &server,
        json!({"id": "t1", "status": "Ready",
               "result": {"sample": format!("{}/delivery/1024x768-png-0?sig=abc", server.uri())}}),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/delivery/1024x768-png-0"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(png(1024, 768), "image/png"))
        .mount(&server)
        .await;
    let (events_tx, mut rx) = Events::channel();
    let mut request = GenerateRequest::new("a lighthouse", DEFAULT_MODEL);
    request.options.aspect_ratio = Some("4:3".into());
    request.options.seed = Some(7);
    request.options.output_format = Some(ImageFormat::Png);
    let result = bfl(&server)
        .generate_opts(&request, &CallOptions::new().with_events(events_tx))
        .await
        .unwrap();
    assert_eq!(
        (result.images[0].width, result.images[0].height),
        (1024, 768)
    );
    assert_eq!(result.request_id.as_deref(), Some("t1"));
    let sent = &posts(&server).await[0];
    assert_eq!(sent["prompt"], "a lighthouse");
    assert_eq!(
        (sent["width"].clone(), sent["height"].clone()),
        (json!(1024), json!(768))
    );
    assert_eq!(
        (sent["seed"].clone(), sent["output_format"].clone()),
        (json!(7), json!("png"))
    );
    // What went upstream is in the result, the ratio mapped to a size.
    assert_eq!(result.sent["width"], 1024);
    assert_eq!(result.sent["model"], DEFAULT_MODEL);
    assert!(!result.sent.contains_key("prompt"));
    let pending: Vec<Option<String>> = events(&mut rx)
        .into_iter()
        .filter_map(|e| match e {
            ProviderEvent::Pending { status, .. } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(
        pending,
        [Some("Pending (40%)".into()), Some("Pending (40%)".into())]
    );
}

#[tokio::test]
async fn an_edit_sends_its_images_as_base64_fields_and_the_result_says_how_many() {
    let server = stub().await;
    let image = |side| InputImage::new(png(side, side), ImageFormat::Png, "in.png");
    let mut request = EditRequest::new("make it blue", DEFAULT_MODEL, vec![image(64), image(32)]);
    request.options.size = Some("64x64".into());
    let result = bfl(&server).edit(&request).await.unwrap();
    assert_eq!((result.images[0].width, result.images[0].height), (64, 64));
    let sent = &posts(&server).await[0];
    assert_eq!(unb64(sent["input_image"].as_str().unwrap()), png(64, 64));
    assert_eq!(unb64(sent["input_image_2"].as_str().unwrap()), png(32, 32));
    assert_eq!(result.sent["input_images"], 2);
    assert!(
        !result.sent.contains_key("input_image"),
        "no base64 in `sent`"
    );
}

#[tokio::test]
async fn n_images_are_that_many_tasks_at_once_with_seeds_counting_up() {
    let server = stub().await;
    let mut request = GenerateRequest::new("x", DEFAULT_MODEL);
    request.options.n = Some(3);
    request.options.seed = Some(10);
    request.options.size = Some("256x256".into());
    let result = bfl(&server).generate(&request).await.unwrap();
    assert_eq!(result.images.len(), 3);
    let mut seeds: Vec<i64> = posts(&server)
        .await
        .iter()
        .map(|b| b["seed"].as_i64().unwrap())
        .collect();
    seeds.sort();
    assert_eq!(seeds, [10, 11, 12]);
    assert_eq!(result.sent["tasks"], 3);
    assert_eq!(result.sent["seeds"], json!([10, 11, 12]));
}

#[tokio::test]
async fn moderation_statuses_are_content_policy_and_nothing_is_downloaded() {
    for (word, what) in [
        ("Request Moderated", "prompt or input image"),
        ("Content Moderated", "withheld"),
    ] {
        let server = MockServer::start().await;
        submits_t1(&server).await;
        status(
            &server,
            json!({"id": "t1", "status": word, "details": {"Moderation Reasons": ["Derivative Works Filter"]}}),
        )
        .await;
        let err = bfl(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentPolicy, "{word}: {err}");
        assert!(err.message.contains(what), "{err}");
        assert!(err.message.contains("Derivative Works"), "{err}");
        assert!(!err.retryable && err.request_sent, "{word}");
        assert_eq!(server.received_requests().await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn failed_and_error_statuses_fail_without_a_second_submission() {
    for word in ["Error", "Failed"] {
        let server = MockServer::start().await;
        submits_t1(&server).await;
        status(
            &server,
            json!({"id": "t1", "status": word, "result": {"error": "GPU fault"}}),
        )
        .await;
        let err = bfl(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamUnavailable, "{err}");
        assert!(!err.retryable, "{word}");
        assert!(err.message.contains("GPU fault"), "{err}");
        assert_eq!(posts(&server).await.len(), 1);
    }
}

#[tokio::test]
async fn http_errors_are_classified_with_hints_and_never_show_the_key() {
    for (status, body, kind, hint) in [
        (
            401,
            json!({"detail": format!("bad key {KEY}")}),
            ErrorKind::Auth,
            "…6789",
        ),
        (
            402,
            json!({"detail": "Insufficient credits"}),
            ErrorKind::QuotaExhausted,
            "credits",
        ),
        (
            429,
            json!({"detail": "You have exceeded the number of active tasks"}),
            ErrorKind::RateLimited,
            "active tasks",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "3")
                    .set_body_json(body),
            )
            .mount(&server)
            .await;
        let err = bfl(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!((err.kind, err.status), (kind, Some(status)), "{err}");
        assert!(err.message.contains(hint), "{err}");
        assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err:?}");
        if status == 429 {
            assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        }
    }
}

#[tokio::test]
async fn malformed_answers_are_bad_responses() {
    for answer in [
        ResponseTemplate::new(200).set_body_string("{\"id\": \"t1\", "),
        ResponseTemplate::new(200).set_body_json(json!({"polling_url": "x"})),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let err = bfl(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    }
    // A Ready task without a sample.
    let server = MockServer::start().await;
    submits_t1(&server).await;
    status(
        &server,
        json!({"id": "t1", "status": "Ready", "result": {}}),
    )
    .await;
    let err = bfl(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(err.message.contains("sample"), "{err}");
}

#[tokio::test]
async fn a_failed_status_check_is_tried_again_since_the_task_is_paid_for() {
    let server = stub().await;
    Mock::given(method("GET"))
        .and(path("/v1/get_result"))
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({"detail": "busy"})))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    let mut request = GenerateRequest::new("x", DEFAULT_MODEL);
    request.options.size = Some("64x64".into());
    let result = bfl(&server).generate(&request).await.unwrap();
    assert_eq!(result.images.len(), 1);
    assert_eq!(posts(&server).await.len(), 1);
}

#[tokio::test]
async fn a_task_never_ready_times_out_at_the_deadline_without_a_second_submission() {
    let server = MockServer::start().await;
    submits_t1(&server).await;
    status(&server, json!({"id": "t1", "status": "Pending"})).await;
    let mut s = settings(&server.uri());
    s.deadline = Duration::from_millis(1200);
    let started = std::time::Instant::now();
    let err = BflProvider::new(s, reqwest::Client::new())
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(err.request_sent && !err.retryable);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(posts(&server).await.len(), 1);
}

#[tokio::test]
async fn cancelling_mid_poll_ends_the_call_at_once() {
    let server = MockServer::start().await;
    submits_t1(&server).await;
    status(&server, json!({"id": "t1", "status": "Pending"})).await;
    let (events_tx, mut rx) = Events::channel();
    let cancel = CancellationToken::new();
    let options = CallOptions::new()
        .with_events(events_tx)
        .with_cancel(cancel.clone());
    let provider = bfl(&server);
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
    let err = outcome.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    assert_eq!(posts(&server).await.len(), 1);
}

#[tokio::test]
async fn result_urls_at_internal_addresses_are_refused_without_connecting() {
    for sample in [
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::ffff:10.0.0.1]/",
    ] {
        let server = MockServer::start().await;
        submits_t1(&server).await;
        status(
            &server,
            json!({"id": "t1", "status": "Ready", "result": {"sample": sample}}),
        )
        .await;
        // Even listed as download hosts, internal addresses other than the base URL's own
        // are refused by the address guard before any connection.
        let mut s = settings(&server.uri());
        s.download_hosts = vec![
            "10.1.2.3".into(),
            "169.254.169.254".into(),
            "[::ffff:a00:1]".into(),
        ];
        let started = std::time::Instant::now();
        let err = BflProvider::new(s, reqwest::Client::new())
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{sample}: {err}");
        assert!(err.message.contains("public addresses"), "{sample}: {err}");
        assert!(started.elapsed() < Duration::from_secs(1), "{sample}");
    }
}

#[tokio::test]
async fn an_expired_result_url_is_a_clear_error_naming_the_ten_minutes() {
    for code in [403, 404] {
        let server = MockServer::start().await;
        submits_t1(&server).await;
        status(
            &server,
            json!({"id": "t1", "status": "Ready",
                   "result": {"sample": format!("{}/delivery/old?se=2026&sig=SECRETSIG", server.uri())}}),
        )
        .await;
        Mock::given(method("GET"))
            .and(path("/delivery/old"))
            .respond_with(ResponseTemplate::new(code).set_body_string("AuthenticationFailed"))
            .mount(&server)
            .await;
        let err = bfl(&server)
            .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, err.status),
            (ErrorKind::BadResponse, Some(code)),
            "{err}"
        );
        assert!(err.message.contains("expire 10 minutes"), "{err}");
        assert!(!err.message.contains("SECRETSIG"), "{err}");
    }
}

#[tokio::test]
async fn a_polling_url_on_a_foreign_host_is_never_sent_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"id": "t1", "polling_url": "https://collector.example.com/get_result?id=t1"}),
        ))
        .mount(&server)
        .await;
    let err = bfl(&server)
        .generate(&GenerateRequest::new("x", DEFAULT_MODEL))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
    assert!(err.message.contains("collector.example.com"), "{err}");
    assert!(err.message.contains("api.eu.bfl.ai"), "{err}");
}

#[tokio::test]
async fn a_model_name_that_would_leave_the_endpoint_path_is_refused_unsent() {
    let server = stub().await;
    for model in ["../admin", "flux/../../x", ".."] {
        let err = bfl(&server)
            .generate_opts(&GenerateRequest::new("x", model), &CallOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{model}: {err}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

/// BFL's wire format for the shared rows: every answer is one request, so a task that is
/// Ready at once carries its image inline.
struct BflStub;

impl ConformanceStub for BflStub {
    fn model(&self) -> &str {
        DEFAULT_MODEL
    }

    fn answer_ok(&self, _n: usize) -> Reply {
        // One image per task, whatever was asked.
        Reply::json(&json!({
            "id": "t1", "status": "Ready",
            "result": {"sample": format!("data:image/png;base64,{}", b64(&png(8, 8)))},
        }))
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let body = match fault {
            Fault::Field {
                field: "message",
                value,
            } => json!({"message": value}),
            Fault::Field { value, .. } => json!({"detail": value}),
            Fault::Refusal => json!({"detail": "Request Moderated: the prompt was flagged"}),
        };
        Reply::error(status, &body)
    }

    fn answer_urls(&self, urls: &[String]) -> Option<Reply> {
        Some(Reply::json(&json!({
            "id": "t1", "status": "Ready", "result": {"sample": urls.first()?},
        })))
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        None
    }
}

fn bfl_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let keys = KeyPool::new(
        [(SecretString::from(target.key), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = BflSettings::new(target.base_url, Arc::new(keys));
    s.timeout = target.timeout;
    s.retry = RetryPolicy {
        max_retries: 0,
        retry_after_cap: target.retry_after_cap,
        ..RetryPolicy::default()
    };
    Box::new(BflProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn the_provider_passes_the_shared_error_rows() {
    error_rows(&bfl_against, &BflStub).await;
}

#[tokio::test]
async fn the_provider_withstands_the_shared_hostile_rows() {
    hostile_rows(&bfl_against, &BflStub).await;
}

#[tokio::test]
async fn the_configured_kind_builds_and_serves_against_the_stub() {
    use imagegen_providers::{
        bfl,
        build::{BuildContext, KindConfig, ProviderConfig},
        http::ClientCache,
    };
    let server = stub().await;
    let kind = KindConfig::Bfl(bfl::Config {
        base_url: format!("{}/v1", server.uri()),
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
