//! The OpenAI provider against a scripted axum upstream, for what wiremock cannot express:
//! server-sent events with pauses between them, connections dropped mid-stream, and noticing
//! that the client went away.

use std::{
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, extract::State, response::Response, routing::post, Router};
use bytes::Bytes;
use imagegen_providers::{
    openai::{OpenAiProvider, OpenAiSettings},
    ErrorKind, Events, GenerateRequest, GenerateResult, ImageProviderExt, ProviderError,
    ProviderEvent,
};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// One step of a scripted response body.
#[derive(Debug, Clone)]
enum Step {
    /// Sends these bytes as one chunk.
    Send(String),
    /// Waits before the next step.
    Pause(Duration),
    /// Breaks the connection, as a crashed proxy would.
    Drop,
}

/// What the fake does for one request: wait before the response head, then the body steps.
#[derive(Debug, Clone, Default)]
struct Script {
    head_delay: Duration,
    body: Vec<Step>,
}

fn script(body: Vec<Step>) -> Script {
    Script {
        head_delay: Duration::ZERO,
        body,
    }
}

/// A fake image API answering the n-th request with the n-th script (the last one repeats).
struct Upstream {
    scripts: Vec<Script>,
    requests: AtomicUsize,
    /// Responses the fake never finished because the client closed the connection first.
    abandoned: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
    base_url: String,
}

/// Counts its response as abandoned when dropped before the script ran out.
struct Watch(Option<Arc<Upstream>>);

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(upstream) = &self.0 {
            upstream.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Upstream {
    async fn start(scripts: Vec<Script>) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Arc::new(Self {
            scripts,
            requests: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            base_url: format!("http://{}/v1", listener.local_addr().unwrap()),
        });
        let app = Router::new()
            .route("/v1/images/generations", post(respond))
            .with_state(upstream.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        upstream
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits up to a second for `n` responses to have been abandoned.
    async fn saw_abandoned(&self, n: usize) -> bool {
        for _ in 0..100 {
            if self.abandoned.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn provider(&self, configure: impl FnOnce(&mut OpenAiSettings)) -> OpenAiProvider {
        let mut s = OpenAiSettings::new(
            self.base_url.parse().unwrap(),
            Some("sk-test-live-0000000000".into()),
        );
        s.retry_base = Duration::from_millis(10);
        configure(&mut s);
        OpenAiProvider::new(s, reqwest::Client::new())
    }
}

async fn respond(State(upstream): State<Arc<Upstream>>, body: Bytes) -> Response {
    let n = upstream.requests.fetch_add(1, Ordering::SeqCst);
    upstream
        .bodies
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let script = upstream.scripts[n.min(upstream.scripts.len() - 1)].clone();
    // Created before the head delay, so a dropped handler counts as well as a dropped body.
    let watch = Watch(Some(upstream.clone()));
    tokio::time::sleep(script.head_delay).await;
    let chunks = futures_util::stream::unfold(
        (script.body.into_iter(), watch),
        |(mut steps, mut watch)| async move {
            loop {
                match steps.next() {
                    Some(Step::Send(text)) => return Some((Ok(Bytes::from(text)), (steps, watch))),
                    Some(Step::Pause(pause)) => tokio::time::sleep(pause).await,
                    Some(Step::Drop) => {
                        let err = io::Error::other("dropped on purpose");
                        return Some((Err(err), (steps, watch)));
                    }
                    None => {
                        watch.0.take();
                        return None;
                    }
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(chunks))
        .unwrap()
}

fn png(side: u32) -> Vec<u8> {
    imagegen_testkit::img::png_rgba(side, side, [10, 120, 200, 255])
}

use imagegen_testkit::img::b64;

fn event(name: &str, data: Value) -> Step {
    Step::Send(format!("event: {name}\ndata: {data}\n\n"))
}

/// Partial `index`, an image `side` pixels square.
fn partial(index: u32, side: u32) -> Step {
    let name = "image_generation.partial_image";
    let data = json!({"type": name, "b64_json": b64(&png(side)), "partial_image_index": index});
    event(name, data)
}

/// The completed event with an image `side` pixels square.
fn completed(side: u32) -> Step {
    let name = "image_generation.completed";
    let data = json!({
        "type": name, "b64_json": b64(&png(side)), "size": "1024x1024", "output_format": "png",
        "usage": {"input_tokens": 12, "output_tokens": 340, "total_tokens": 352}
    });
    event(name, data)
}

fn error_event(kind: &str, code: &str, message: &str) -> Step {
    let data = json!({"type": "error", "error": {"type": kind, "code": code, "message": message}});
    event("error", data)
}

fn streaming(partials: u8) -> GenerateRequest {
    let mut r = GenerateRequest::new("a lighthouse at dusk", "gpt-image-1.5");
    r.options.partial_images = Some(partials);
    r
}

fn drain(rx: &mut UnboundedReceiver<ProviderEvent>) -> Vec<ProviderEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// The partial images among `events`, as (index, side).
fn partials(events: &[ProviderEvent]) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            ProviderEvent::PartialImage { index, image } => Some((*index, image.width)),
            _ => None,
        })
        .collect()
}

async fn generate(
    provider: &OpenAiProvider,
    request: &GenerateRequest,
) -> (Result<GenerateResult, ProviderError>, Vec<ProviderEvent>) {
    let (events, mut rx) = Events::channel();
    let result = provider.generate_with_events(request, &events).await;
    (result, drain(&mut rx))
}

// ---- streaming ----------------------------------------------------------------------------

#[tokio::test]
async fn partial_images_arrive_in_order_while_the_stream_runs() {
    let upstream = Upstream::start(vec![script(vec![
        partial(0, 8),
        Step::Pause(Duration::from_millis(300)),
        partial(1, 16),
        Step::Pause(Duration::from_millis(300)),
        completed(64),
    ])])
    .await;
    let p = upstream.provider(|_| {});
    let (events, mut rx) = Events::channel();
    let started = Instant::now();
    let request = streaming(2);
    let call = p.generate_with_events(&request, &events);
    tokio::pin!(call);
    let mut arrivals = Vec::new();
    let result = loop {
        tokio::select! {
            Some(event) = rx.recv() => {
                if let ProviderEvent::PartialImage { index, image } = event {
                    arrivals.push((index, image.width, started.elapsed()));
                }
            }
            result = &mut call => break result.unwrap(),
        }
    };
    let done = started.elapsed();
    let order: Vec<_> = arrivals.iter().map(|(i, w, _)| (*i, *w)).collect();
    assert_eq!(order, [(0, 8), (1, 16)]);
    assert!(arrivals[0].2 < Duration::from_millis(250), "{arrivals:?}");
    assert!(arrivals[1].2 >= Duration::from_millis(300), "{arrivals:?}");
    assert!(done >= Duration::from_millis(600), "{done:?}");

    assert_eq!(result.images.len(), 1);
    assert_eq!(result.images[0].width, 64);
    assert_eq!(result.usage.unwrap().total_tokens, Some(352));
    let sent = upstream.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        (sent["stream"].clone(), sent["partial_images"].clone()),
        (json!(true), json!(2))
    );
}

#[tokio::test]
async fn a_completed_event_before_the_partials_ends_the_call_at_once() {
    let upstream = Upstream::start(vec![script(vec![
        partial(0, 8),
        completed(64),
        Step::Pause(Duration::from_secs(5)),
        partial(1, 16),
    ])])
    .await;
    let started = Instant::now();
    let (result, events) = generate(&upstream.provider(|_| {}), &streaming(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not wait for the late partial"
    );
    assert_eq!(result.unwrap().images[0].width, 64);
    assert_eq!(partials(&events), [(0, 8)]);
    assert!(
        upstream.saw_abandoned(1).await,
        "the rest of the stream was not read"
    );
}

#[tokio::test]
async fn events_named_only_by_their_data_type_with_crlf_lines_in_small_chunks() {
    let data = |v: Value| format!("data: {v}\r\n\r\n");
    let text = [
        ": warming up\r\n\r\n".to_string(),
        data(json!({"type": "image_generation.partial_image", "b64_json": b64(&png(8)), "partial_image_index": 0})),
        data(json!({"type": "image_generation.completed", "b64_json": b64(&png(32))})),
    ]
    .concat();
    // Seven-byte chunks with pauses, so lines and `\r\n` pairs straddle reads.
    let steps = text
        .as_bytes()
        .chunks(7)
        .flat_map(|c| {
            [
                Step::Send(String::from_utf8(c.to_vec()).unwrap()),
                Step::Pause(Duration::from_micros(200)),
            ]
        })
        .collect();
    let upstream = Upstream::start(vec![script(steps)]).await;
    let (result, events) = generate(&upstream.provider(|_| {}), &streaming(1)).await;
    assert_eq!(result.unwrap().images[0].width, 32);
    assert_eq!(partials(&events), [(0, 8)]);
}

#[tokio::test]
async fn an_error_event_mid_stream_is_classified_like_an_error_body() {
    let refused = Upstream::start(vec![script(vec![
        partial(0, 8),
        error_event(
            "image_generation_user_error",
            "moderation_blocked",
            "Your request was rejected by the safety system.",
        ),
    ])])
    .await;
    let (result, events) = generate(&refused.provider(|_| {}), &streaming(2)).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContentPolicy);
    assert!(!err.retryable);
    assert!(err.message.contains("rephrase"), "{err}");
    assert_eq!(err.provider_code.as_deref(), Some("moderation_blocked"));
    assert_eq!(err.attempts, 1);
    assert_eq!(refused.requests(), 1, "a refusal is not retried");
    assert_eq!(partials(&events), [(0, 8)]);

    let flaky = Upstream::start(vec![
        script(vec![error_event(
            "server_error",
            "server_error",
            "try again",
        )]),
        script(vec![completed(32)]),
    ])
    .await;
    let (result, events) = generate(&flaky.provider(|_| {}), &streaming(0)).await;
    assert_eq!(result.unwrap().images[0].width, 32);
    assert_eq!(flaky.requests(), 2, "a generic stream error is retried");
    let reason = events.iter().find_map(|e| match e {
        ProviderEvent::Retrying { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("during the stream: try again")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn a_dropped_stream_is_retried_and_the_second_attempt_succeeds() {
    let upstream = Upstream::start(vec![
        script(vec![
            partial(0, 8),
            Step::Pause(Duration::from_millis(50)),
            Step::Drop,
        ]),
        script(vec![partial(0, 8), partial(1, 16), completed(64)]),
    ])
    .await;
    let (result, events) = generate(&upstream.provider(|_| {}), &streaming(2)).await;
    assert_eq!(result.unwrap().images[0].width, 64);
    assert_eq!(upstream.requests(), 2);
    // The second attempt starts its partials over.
    assert_eq!(partials(&events), [(0, 8), (0, 8), (1, 16)]);
    let reason = events.iter().find_map(|e| match e {
        ProviderEvent::Retrying { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("stream ended before the image was complete")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn a_stream_that_stops_before_completed_is_a_retryable_network_error() {
    let upstream = Upstream::start(vec![script(vec![partial(0, 8)])]).await;
    let p = upstream.provider(|s| s.max_retries = 1);
    let (result, _) = generate(&p, &streaming(2)).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Network);
    assert!(err.retryable);
    assert!(err.request_sent, "the stream had started");
    assert_eq!(err.attempts, 2);
    assert!(
        err.message
            .contains("the stream ended before the image was complete"),
        "{err}"
    );
    assert!(err.message.contains("after 1 retry"), "{err}");
}

#[tokio::test]
async fn the_body_cap_applies_to_a_stream() {
    let upstream = Upstream::start(vec![script(vec![
        partial(0, 8),
        Step::Send(format!(": {}\n", "x".repeat(60_000))),
        completed(64),
    ])])
    .await;
    let p = upstream.provider(|s| s.max_response_bytes = 50_000);
    let (result, _) = generate(&p, &streaming(1)).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(
        err.message
            .contains("the response stream is larger than 50000 bytes"),
        "{err}"
    );
}

// ---- cancellation -------------------------------------------------------------------------

#[tokio::test]
async fn dropping_the_call_mid_request_closes_the_upstream_connection() {
    let upstream = Upstream::start(vec![Script {
        head_delay: Duration::from_secs(5),
        body: vec![completed(64)],
    }])
    .await;
    let p = upstream.provider(|_| {});
    let request = GenerateRequest::new("slow", "gpt-image-1.5");
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_millis(200), p.generate(&request)).await;
    assert!(cut.is_err());
    assert!(
        upstream.saw_abandoned(1).await,
        "the upstream noticed the client leave"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn dropping_the_call_mid_stream_closes_the_upstream_connection() {
    let upstream = Upstream::start(vec![script(vec![
        partial(0, 8),
        Step::Pause(Duration::from_secs(5)),
        completed(64),
    ])])
    .await;
    let p = upstream.provider(|_| {});
    let (events, mut rx) = Events::channel();
    let request = streaming(1);
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        p.generate_with_events(&request, &events),
    )
    .await;
    assert!(cut.is_err());
    assert_eq!(partials(&drain(&mut rx)), [(0, 8)]);
    assert!(
        upstream.saw_abandoned(1).await,
        "the upstream noticed the client leave"
    );
}
