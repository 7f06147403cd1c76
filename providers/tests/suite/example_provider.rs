//! The example provider of `examples/made_up_json` against its own stub: it is written only
//! as one attempt, a `parse_error`, a poll and a download on the shared core, and gets key
//! handling, retries, `Retry-After`, deadlines, progress and secret scrubbing from it.

#[path = "../../examples/made_up_json/provider.rs"]
#[allow(dead_code)]
mod provider;

use std::{io::Cursor, sync::Arc, time::Duration};

use base64::Engine as _;
use image::{ImageEncoder, RgbaImage};
use imagegen_providers::{
    http::{Poller, RetryPolicy},
    keys::KeyPool,
    testing::{error_rows, hostile_rows, ConformanceStub, Fault, StubTarget},
    CallOptions, ErrorKind, Events, GenerateRequest, ImageProvider, ProviderEvent,
};
use imagegen_testkit::Reply;
use provider::{PixieProvider, PixieSettings, MODEL};
use secrecy::SecretString;
use serde_json::json;
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, Request, ResponseTemplate,
};

const KEY: &str = "pk-SENTINEL-example-0123456789";

fn png() -> Vec<u8> {
    let img = RgbaImage::from_fn(4, 3, |x, y| {
        image::Rgba([x as u8 * 60, y as u8 * 80, 9, 255])
    });
    let mut out = Cursor::new(Vec::new());
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), 4, 3, image::ExtendedColorType::Rgba8)
        .unwrap();
    out.into_inner()
}

fn settings(server: &MockServer) -> PixieSettings {
    let keys = KeyPool::new(
        [(SecretString::from(KEY), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = PixieSettings::new(
        format!("{}/v1", server.uri()).parse().unwrap(),
        Arc::new(keys),
    );
    s.timeout = Duration::from_secs(5);
    s.poll = Poller::new(Duration::from_millis(10), Duration::from_millis(40), 2.0);
    s
}

fn pixie(server: &MockServer) -> PixieProvider {
    PixieProvider::new(settings(server), reqwest::Client::new())
}

/// A job that is done at once, with its result on the stub itself.
async fn done_job(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/v1/jobs/j1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"status": "done", "result_url": format!("{}/files/j1.png", server.uri())}),
        ))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/j1.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(png(), "image/png"))
        .mount(server)
        .await;
}

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(json!({"id": "j1"}))
}

fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>) -> Vec<ProviderEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}

#[tokio::test]
async fn a_job_is_submitted_with_the_key_then_its_result_downloaded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(accepted())
        .expect(1)
        .mount(&server)
        .await;
    done_job(&server).await;
    let result = pixie(&server)
        .generate_opts(
            &GenerateRequest::new("a lighthouse", MODEL),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    assert_eq!((result.images[0].width, result.images[0].height), (4, 3));
    assert_eq!(result.request_id.as_deref(), Some("j1"));
    let sent: serde_json::Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(sent["prompt"], "a lighthouse");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_says_then_the_call_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0.05")
                .set_body_json(json!({"error": {"code": "busy", "message": "slow down"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    done_job(&server).await;
    let (events_tx, mut rx) = Events::channel();
    let result = pixie(&server)
        .generate_opts(
            &GenerateRequest::new("x", MODEL),
            &CallOptions::new().with_events(events_tx),
        )
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    let waits: Vec<Duration> = events(&mut rx)
        .into_iter()
        .filter_map(|e| match e {
            ProviderEvent::Retrying { delay, .. } => Some(delay),
            _ => None,
        })
        .collect();
    // One key: it rests for the asked wait, and the retry comes after it.
    assert!(!waits.is_empty(), "a retry was reported");
    assert!(
        waits.iter().all(|w| *w >= Duration::from_millis(50)),
        "{waits:?}"
    );
    let posts = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r: &&Request| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 2);
}

#[tokio::test]
async fn a_rejected_key_is_an_auth_error_that_never_shows_the_key() {
    let server = MockServer::start().await;
    // A hostile server echoes the key it was sent in its message.
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"code": "bad_key", "message": format!("key {KEY} is not valid")}}),
        ))
        .mount(&server)
        .await;
    let err = pixie(&server)
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), (ErrorKind::Auth, Some(401)));
    assert!(!err.retryable);
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("SENTINEL"), "{shown}");
    assert!(err.message.contains("…6789"), "{err}");
    assert_eq!(err.provider.as_deref(), Some("pixie"));
    assert_eq!(err.key_fingerprint.as_deref(), Some("…6789"));
}

#[tokio::test]
async fn a_pending_job_is_polled_with_progress_until_it_is_done() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs/j1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "running"})))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    done_job(&server).await;
    let (events_tx, mut rx) = Events::channel();
    let result = pixie(&server)
        .generate_opts(
            &GenerateRequest::new("x", MODEL),
            &CallOptions::new().with_events(events_tx),
        )
        .await
        .unwrap();
    assert_eq!(result.images.len(), 1);
    let pending: Vec<(u32, Option<String>)> = events(&mut rx)
        .into_iter()
        .filter_map(|e| match e {
            ProviderEvent::Pending { checks, status } => Some((checks, status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pending,
        [(1, Some("running".into())), (2, Some("running".into()))]
    );
}

#[tokio::test]
async fn a_job_that_never_finishes_ends_at_the_deadline_without_a_second_submission() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .respond_with(accepted())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs/j1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "queued"})))
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.deadline = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = PixieProvider::new(s, reqwest::Client::new())
        .generate_opts(&GenerateRequest::new("x", MODEL), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(err.request_sent);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Pixie's wire format for the shared error and hostile rows: a job finished at once with
/// its image inline as a `data:` URL, so every row is one request as the rows count them.
struct PixieStub;

impl ConformanceStub for PixieStub {
    fn model(&self) -> &str {
        MODEL
    }

    fn answer_ok(&self, _n: usize) -> Reply {
        // Pixie makes one image per job, whatever was asked.
        let data = base64::engine::general_purpose::STANDARD.encode(png());
        Reply::json(&json!({
            "id": "j1",
            "status": "done",
            "result_url": format!("data:image/png;base64,{data}"),
        }))
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let error = match fault {
            Fault::Field {
                field: "code",
                value,
            } => json!({"code": value, "message": "failed"}),
            Fault::Field { value, .. } => json!({"code": "error", "message": value}),
            Fault::Refusal => json!({"code": "unsafe_prompt", "message": "refused"}),
        };
        Reply::error(status, &json!({ "error": error }))
    }

    fn answer_urls(&self, urls: &[String]) -> Option<Reply> {
        let url = urls.first()?;
        Some(Reply::json(
            &json!({"id": "j1", "status": "done", "result_url": url}),
        ))
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        None
    }
}

/// Pixie pointed at a conformance row's stub, retries off as the rows require.
fn pixie_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let keys = KeyPool::new(
        [(SecretString::from(target.key), "test".to_string())],
        Duration::from_secs(600),
    );
    let mut s = PixieSettings::new(target.base_url, Arc::new(keys));
    s.timeout = target.timeout;
    s.retry = RetryPolicy {
        max_retries: 0,
        retry_after_cap: target.retry_after_cap,
        ..RetryPolicy::default()
    };
    Box::new(PixieProvider::new(s, reqwest::Client::new()))
}

#[tokio::test]
async fn the_example_passes_the_shared_error_rows() {
    error_rows(&pixie_against, &PixieStub).await;
}

#[tokio::test]
async fn the_example_withstands_the_shared_hostile_rows() {
    hostile_rows(&pixie_against, &PixieStub).await;
}
