//! The real binary against a misbehaving upstream: rate limits and their hints, server errors,
//! bodies that are not JSON, timeouts and the call's deadline, cancellation mid-request and
//! mid-backoff, progress heartbeats, streamed partial images, bounds on calls in flight, and the
//! fields every error result carries.
//!
//! Every test starts `imagegen-mcp --config FILE serve` with a clean environment, talks to it
//! with rmcp's client (a handler that records each progress notification with its arrival
//! time), and points it at a fake OpenAI image API: wiremock where a scripted sequence of
//! responses is enough, the test kit's fake upstream (`imagegen_testkit::FakeUpstream`) where
//! the test needs pauses inside a body, a dropped connection, to notice that the client went
//! away, or to count requests in flight.

use std::{
    io,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::{args, binary};
use base64::Engine as _;
use imagegen_mcp::server::{HEARTBEAT, HEARTBEAT_VAR};
use imagegen_testkit::{img, openai as testkit_openai, sse, Chunk, FakeUpstream, Reply};
use rmcp::{
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, ClientConfig, ClientRequest,
        ProgressNotificationParam, ProgressToken, ProtocolVersion, ReadResourceRequestParams,
        ResourceContents, ServerResult,
    },
    service::{NotificationContext, PeerRequestOptions, RequestHandle, RunningService},
    transport::{ConfigureCommandExt, TokioChildProcess},
    ClientHandler, RoleClient, ServiceExt,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    task::JoinSet,
};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

/// The API key every fake upstream is called with; it must never appear in a result.
const KEY: &str = "sk-resilience-SECRET-0123456789-9f3a";
/// What results may show of it.
const FINGERPRINT: &str = "sk-…9f3a";

// ---- the server under test ----------------------------------------------------------------

/// One progress notification as the client received it.
#[derive(Debug, Clone)]
struct Note {
    token: ProgressToken,
    progress: f64,
    message: String,
    at: Instant,
}

/// A client speaking `version` that records every progress notification.
#[derive(Debug, Clone)]
struct Recorder {
    notes: Arc<Mutex<Vec<Note>>>,
    version: ProtocolVersion,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = self.version.clone();
        info
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.notes.lock().unwrap().push(Note {
            token: params.progress_token,
            progress: params.progress,
            message: params.message.unwrap_or_default(),
            at: Instant::now(),
        });
    }
}

/// A running `imagegen-mcp serve`, its output directory, its progress notifications and the
/// lines of its log as they arrive.
struct Harness {
    client: RunningService<RoleClient, Recorder>,
    notes: Arc<Mutex<Vec<Note>>>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    out: PathBuf,
    _home: tempfile::TempDir,
}

impl Harness {
    /// Starts the server with `config` (top-level keys and provider tables); the output
    /// directory, link delivery and no reload polling are added here.
    async fn start(config: String) -> Self {
        Self::start_speaking(config, ProtocolVersion::V_2025_11_25).await
    }

    /// [`Harness::start`] with a client speaking `version`.
    async fn start_speaking(config: String, version: ProtocolVersion) -> Self {
        Self::start_full(config, version, &[]).await
    }

    /// [`Harness::start_speaking`] with more environment variables for the server.
    async fn start_full(config: String, version: ProtocolVersion, extra: &[(&str, &str)]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let out = home.path().join("out");
        let file = home.path().join("imagegen.toml");
        std::fs::write(
            &file,
            format!(
                "{config}\n[reload]\npoll_s = 0\n[output]\ndir = {:?}\ndelivery = \"link\"\n",
                out.to_str().unwrap()
            ),
        )
        .unwrap();
        let mut envs = vec![("RUST_LOG", "imagegen_mcp=info,imagegen_providers=info,warn")];
        envs.extend_from_slice(extra);
        let mut cmd = binary(home.path(), &envs);
        cmd.kill_on_drop(true);
        let cmd = cmd.configure(|c| {
            c.arg("--config").arg(&file).arg("serve");
        });
        let (transport, stderr) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imagegen-mcp");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = stderr.expect("stderr piped");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push((Instant::now(), line));
            }
        });
        let notes = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            notes: notes.clone(),
            version,
        };
        let client = recorder.serve(transport).await.expect("MCP handshake");
        Self {
            client,
            notes,
            log,
            out,
            _home: home,
        }
    }

    /// Sends a `generate_image` call and returns its handle, which knows its progress token.
    async fn send(&self, arguments: Value) -> RequestHandle<RoleClient> {
        let params = CallToolRequestParams::new("generate_image").with_arguments(args(arguments));
        self.client
            .peer()
            .send_request_with_option(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                PeerRequestOptions::no_options(),
            )
            .await
            .expect("request sent")
    }

    /// Makes a call and returns its result with the progress token it carried.
    async fn generate(&self, arguments: Value) -> (CallToolResult, ProgressToken) {
        let handle = self.send(arguments).await;
        let token = handle.progress_token.clone();
        (answer(handle).await, token)
    }

    /// The progress notifications of the call with `token`, in the server's order.
    fn notes(&self, token: &ProgressToken) -> Vec<Note> {
        let mut notes: Vec<Note> = self
            .notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| &n.token == token)
            .cloned()
            .collect();
        notes.sort_by(|a, b| a.progress.total_cmp(&b.progress));
        notes
    }

    /// Every progress message received so far, whatever the call.
    fn all_messages(&self) -> Vec<String> {
        let notes = self.notes.lock().unwrap();
        notes.iter().map(|n| n.message.clone()).collect()
    }

    /// When the server first logged a line containing `text`, waiting up to `wait` (log
    /// wording changes: match on a word, such as `cancelled`).
    async fn logged(&self, text: &str, wait: Duration) -> Option<Instant> {
        let until = Instant::now() + wait;
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|(_, line)| line.contains(text))
                .map(|(at, _)| *at);
            if found.is_some() || Instant::now() >= until {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The files in the output directory (none when it was never created).
    fn saved_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(&self.out) {
            // The images, not their sidecars (`NAME.json`) nor the usage ledger (`usage/`).
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "json"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list {}: {e}", self.out.display()),
        }
    }

    /// The bytes `resources/read` returns for `uri`.
    async fn read_image(&self, uri: &str) -> Vec<u8> {
        let read = self
            .client
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .unwrap_or_else(|e| panic!("{uri} is readable: {e}"));
        let ResourceContents::BlobResourceContents { blob, .. } = &read.contents[0] else {
            panic!("{uri}: a blob expected");
        };
        base64::engine::general_purpose::STANDARD
            .decode(blob)
            .unwrap()
    }

    async fn stop(self) {
        let _ = self.client.cancel().await;
    }
}

/// Waits for the result of a call.
async fn answer(handle: RequestHandle<RoleClient>) -> CallToolResult {
    match handle.await_response().await.expect("a response") {
        ServerResult::CallToolResult(result) => result,
        other => panic!("not a tool result: {other:?}"),
    }
}

fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

/// The structured error of a failed call.
fn error_of(result: &CallToolResult) -> Value {
    assert_eq!(
        result.is_error,
        Some(true),
        "a failure expected: {result:?}"
    );
    let error = structured(result)["error"].clone();
    assert!(error.is_object(), "{result:?}");
    error
}

/// The human-readable first text block of a result.
fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .find_map(|c| c.as_text().map(|t| t.text.clone()))
        .unwrap_or_default()
}

fn assert_success(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(false), "success expected: {result:?}");
    let s = structured(result);
    assert!(s["error"].is_null(), "{s}");
    assert_eq!(s["images"].as_array().map(Vec::len), Some(1), "{s}");
    s
}

/// The `[providers.openai]` configuration for an upstream at `base`, plus `extra` lines.
fn openai(base: &str, extra: &str) -> String {
    format!(
        "default_provider = \"openai\"\n\
         [providers.openai]\n\
         kind = \"openai\"\n\
         api_key = \"{KEY}\"\n\
         base_url = \"{base}\"\n\
         connect_timeout_s = 2\n\
         retry_base_ms = 50\n\
         retry_max_ms = 200\n\
         {extra}\n"
    )
}

fn prompt(text: &str) -> Value {
    json!({"prompt": text, "size": "1024x1024"})
}

// ---- images and upstream bodies -----------------------------------------------------------

/// A PNG `side` pixels square.
fn solid_png(side: u32) -> Vec<u8> {
    img::png(side, side)
}

fn b64_png(side: u32) -> String {
    img::b64(&solid_png(side))
}

/// The width of a PNG, from its header.
fn png_width(bytes: &[u8]) -> u32 {
    img::png_size(bytes).expect("a PNG").0
}

fn ok_body(side: u32) -> Value {
    json!({"created": 1, "data": [{"b64_json": b64_png(side)}],
           "usage": {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110}})
}

fn api_error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

// ---- a scripted wiremock upstream ---------------------------------------------------------

/// Builds the response to one request (a function, so a response can depend on the time).
type Step = Box<dyn Fn() -> ResponseTemplate + Send + Sync>;

fn fixed(template: ResponseTemplate) -> Step {
    Box::new(move || template.clone())
}

fn ok() -> Step {
    fixed(
        ResponseTemplate::new(200)
            .insert_header("x-request-id", "req_ok")
            .set_body_json(ok_body(64)),
    )
}

/// An OpenAI error response with an `x-request-id`.
fn api_error(status: u16, kind: &str, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-request-id", format!("req_{status}_{code}").as_str())
        .set_body_json(api_error_body(message, kind, code))
}

fn rate_limited() -> ResponseTemplate {
    api_error(
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for images per minute.",
    )
}

fn server_error(status: u16) -> ResponseTemplate {
    api_error(
        status,
        "server_error",
        "server_error",
        "The server had an error while processing your request.",
    )
}

/// Answers the n-th request with the n-th step (the last one repeats), noting arrival times.
struct Script {
    steps: Vec<Step>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for Script {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let mut arrivals = self.arrivals.lock().unwrap();
        let n = arrivals.len();
        arrivals.push(Instant::now());
        (self.steps[n.min(self.steps.len() - 1)])()
    }
}

/// A wiremock server with one or more scripted image APIs under path prefixes.
struct Scripted {
    server: MockServer,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    /// One image API at `{uri}/v1`.
    async fn start(steps: Vec<Step>) -> Self {
        let server = MockServer::start().await;
        let arrivals = mount(&server, "", steps).await;
        Self { server, arrivals }
    }

    fn base(&self) -> String {
        format!("{}/v1", self.server.uri())
    }

    fn requests(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

/// Mounts a scripted image API at `{prefix}/v1/images/generations`.
async fn mount(server: &MockServer, prefix: &str, steps: Vec<Step>) -> Arc<Mutex<Vec<Instant>>> {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path(format!("{prefix}/v1/images/generations")))
        .respond_with(Script {
            steps,
            arrivals: arrivals.clone(),
        })
        .mount(server)
        .await;
    arrivals
}

// ---- the kit's fake upstream for streams, dropped connections and concurrency ------------

/// A JSON answer with one 64-pixel image, after `head_delay`.
fn json_reply(head_delay: Duration) -> Reply {
    Reply::json(&ok_body(64)).delay(head_delay)
}

fn event(name: &str, data: Value) -> Chunk {
    Chunk::text(sse::event(name, &data))
}

fn partial(index: u32, side: u32) -> Chunk {
    Chunk::text(testkit_openai::partial_event(index, &solid_png(side)))
}

fn completed(side: u32) -> Chunk {
    Chunk::text(testkit_openai::completed_event(
        &solid_png(side),
        "1024x1024",
    ))
}

// ---- retries and their hints --------------------------------------------------------------

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_the_call_succeeds() {
    let upstream = Scripted::start(vec![
        fixed(rate_limited().insert_header("retry-after", "1")),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, token) = h.generate(prompt("retry after a second")).await;
    assert_success(&result);
    let arrivals = upstream.arrivals();
    assert_eq!(arrivals.len(), 2, "one retry");
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_secs(3),
        "the retry waited {gap:?}"
    );
    let notes = h.notes(&token);
    assert!(
        notes
            .iter()
            .any(|n| n.message.starts_with("retry 1 in 1.0 s")),
        "the wait was announced: {notes:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn retry_after_ms_wins_over_retry_after() {
    let upstream = Scripted::start(vec![
        fixed(
            rate_limited()
                .insert_header("retry-after-ms", "200")
                .insert_header("retry-after", "10"),
        ),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, _) = h.generate(prompt("milliseconds win")).await;
    assert_success(&result);
    let arrivals = upstream.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(190) && gap < Duration::from_secs(1),
        "retry-after-ms (200 ms) was used, not retry-after (10 s): {gap:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_retry_after_past_the_cap_fails_at_once_saying_when_to_come_back() {
    let upstream = Scripted::start(vec![
        fixed(rate_limited().insert_header("retry-after", "121")),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "retry_after_cap_s = 120")).await;
    let started = Instant::now();
    let (result, _) = h.generate(prompt("too long a wait")).await;
    assert!(started.elapsed() < Duration::from_secs(3), "no wait at all");
    let error = error_of(&result);
    assert_eq!(error["kind"], "rate_limited");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["retry_after_s"], 121);
    assert_eq!(error["attempts"], 1);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("longer than retry_after_cap (120 s)")
            && message.contains("try again after"),
        "{message}"
    );
    assert!(
        text_of(&result).contains("Try again in 121 s"),
        "{}",
        text_of(&result)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests(), 1, "not retried");
    h.stop().await;
}

#[tokio::test]
async fn an_http_date_retry_after_is_honoured() {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    // Three seconds ahead at one-second resolution: a wait between 2 and 3 s.
    let dated: Step = Box::new(move || {
        let when = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
        rate_limited().insert_header("retry-after", when.format(&format).unwrap().as_str())
    });
    let upstream = Scripted::start(vec![dated, ok()]).await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, _) = h.generate(prompt("come back at a date")).await;
    assert_success(&result);
    let arrivals = upstream.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_millis(4500),
        "waited until the date: {gap:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn x_should_retry_false_stops_the_retry_of_a_500() {
    let upstream = Scripted::start(vec![
        fixed(server_error(500).insert_header("x-should-retry", "false")),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, _) = h.generate(prompt("do not retry")).await;
    let error = error_of(&result);
    assert_eq!(error["kind"], "upstream_unavailable");
    assert_eq!(error["retryable"], false);
    assert_eq!(error["status"], 500);
    assert_eq!(error["attempts"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_500_then_a_200_succeeds_after_one_retry() {
    let upstream = Scripted::start(vec![fixed(server_error(500)), ok()]).await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, token) = h.generate(prompt("second time lucky")).await;
    let s = assert_success(&result);
    assert_eq!(s["request_id"], "req_ok");
    assert_eq!(upstream.requests(), 2);
    // The digest computed while the answer streamed in is the saved file's.
    let image = &s["images"][0];
    let saved = std::fs::read(image["path"].as_str().unwrap()).unwrap();
    let digest: String = Sha256::digest(&saved)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(image["sha256"], digest.as_str());
    let messages: Vec<_> = h.notes(&token).into_iter().map(|n| n.message).collect();
    assert!(
        messages.iter().any(|m| m == "requesting (attempt 2)"),
        "{messages:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn persistent_503s_use_up_the_retries_and_report_the_attempts() {
    let upstream = Scripted::start(vec![fixed(server_error(503))]).await;
    let h = Harness::start(openai(&upstream.base(), "max_retries = 2")).await;
    let (result, _) = h.generate(prompt("always down")).await;
    let error = error_of(&result);
    assert_eq!(error["kind"], "upstream_unavailable");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["status"], 503);
    assert_eq!(error["attempts"], 3);
    assert_eq!(error["request_id"], "req_503_server_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("after 2 retries"), "{message}");
    assert_eq!(upstream.requests(), 3);
    h.stop().await;
}

#[tokio::test]
async fn a_plain_text_429_is_retried_and_then_succeeds() {
    let upstream = Scripted::start(vec![
        fixed(ResponseTemplate::new(429).set_body_string("error code: 1015")),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, _) = h.generate(prompt("edge rate limit")).await;
    assert_success(&result);
    assert_eq!(upstream.requests(), 2);
    h.stop().await;
}

#[tokio::test]
async fn persistent_non_json_errors_give_a_clear_error_without_the_page() {
    let html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
                <body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>";
    let gateway = Scripted::start(vec![fixed(
        ResponseTemplate::new(502).set_body_raw(html, "text/html; charset=utf-8"),
    )])
    .await;
    let edge = Scripted::start(vec![fixed(
        ResponseTemplate::new(429).set_body_string("error code: 1015"),
    )])
    .await;
    let (h502, h429) = tokio::join!(
        Harness::start(openai(&gateway.base(), "max_retries = 1")),
        Harness::start(openai(&edge.base(), "max_retries = 1")),
    );
    let ((bad_gateway, _), (limited, _)) =
        tokio::join!(h502.generate(prompt("html")), h429.generate(prompt("text")));

    let error = error_of(&bad_gateway);
    assert_eq!(error["kind"], "upstream_unavailable");
    assert_eq!(error["status"], 502);
    assert_eq!(error["attempts"], 2, "retried once");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("HTML"), "{message}");
    let whole = serde_json::to_string(&bad_gateway).unwrap();
    for part in ["<html", "<body", "<h1>", "cloudflare"] {
        assert!(
            !whole.contains(part),
            "the page leaked into the result: {whole}"
        );
    }
    assert_eq!(gateway.requests(), 2);

    let error = error_of(&limited);
    assert_eq!(error["kind"], "rate_limited");
    assert_eq!(error["status"], 429);
    assert_eq!(error["attempts"], 2);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("error code: 1015"), "{message}");
    assert_eq!(edge.requests(), 2);
    tokio::join!(h502.stop(), h429.stop());
}

#[tokio::test]
async fn insufficient_quota_is_permanent() {
    let upstream = Scripted::start(vec![
        fixed(api_error(
            429,
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
        )),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let (result, _) = h.generate(prompt("no money")).await;
    let error = error_of(&result);
    assert_eq!(error["kind"], "quota_exhausted");
    assert_eq!(error["retryable"], false);
    assert_eq!(error["provider_code"], "insufficient_quota");
    assert_eq!(error["attempts"], 1);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(FINGERPRINT), "names the key: {message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_read_timeout_is_retried_only_when_configured() {
    let slow = || {
        fixed(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(64))
                .set_delay(Duration::from_secs(4)),
        )
    };
    let cautious = Scripted::start(vec![slow()]).await;
    let brave = Scripted::start(vec![slow()]).await;
    let (hc, hb) = tokio::join!(
        Harness::start(openai(&cautious.base(), "timeout_s = 1")),
        Harness::start(openai(
            &brave.base(),
            "timeout_s = 1\nretry_on_timeout = true\nmax_retries = 1"
        )),
    );
    let started = Instant::now();
    let ((once, _), (twice, _)) = tokio::join!(
        hc.generate(prompt("slow")),
        hb.generate(prompt("slow, retried"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let error = error_of(&once);
    assert_eq!(error["kind"], "timeout");
    assert_eq!(error["attempts"], 1);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("retry_on_timeout"),
        "says how to change it: {message}"
    );
    assert!(message.contains("may still be billed"), "{message}");

    let error = error_of(&twice);
    assert_eq!(error["kind"], "timeout");
    assert_eq!(error["attempts"], 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cautious.requests(),
        1,
        "a read timeout is not retried by default"
    );
    assert_eq!(brave.requests(), 2, "retry_on_timeout = true retries it");
    tokio::join!(hc.stop(), hb.stop());
}

#[tokio::test]
async fn the_deadline_bounds_a_slow_retry_loop() {
    // 500s asking for a 1 s wait, ten retries allowed, a 2 s deadline: the second wait would
    // pass the deadline, so it is not started, and the call ends at once with the last
    // upstream error (annotated with the deadline and the retries made), not a `timeout`.
    let waits = Scripted::start(vec![fixed(
        server_error(500).insert_header("retry-after", "1"),
    )])
    .await;
    // Slow 500s (1.2 s each, 0.1 s apart): the deadline cuts the second attempt in flight,
    // which is a `timeout` saying how far the call got.
    let slow = Scripted::start(vec![fixed(
        server_error(500)
            .insert_header("retry-after-ms", "100")
            .set_delay(Duration::from_millis(1200)),
    )])
    .await;
    let (hw, hs) = tokio::join!(
        Harness::start(openai(&waits.base(), "deadline_s = 2\nmax_retries = 10")),
        Harness::start(openai(&slow.base(), "deadline_s = 2\nmax_retries = 10")),
    );
    let ((waited, waited_for), (cut, cut_after)) =
        tokio::join!(timed(&hw, "waits"), timed(&hs, "slow"));

    assert!(waited_for < Duration::from_millis(2500), "{waited_for:?}");
    let error = error_of(&waited);
    assert_eq!(error["kind"], "upstream_unavailable");
    assert_eq!(error["attempts"], 2);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("waiting 1 s would pass the call's deadline of 2 s"),
        "{message}"
    );
    assert!(message.contains("after 1 retry"), "{message}");
    assert_eq!(waits.requests(), 2);

    assert!(
        cut_after >= Duration::from_millis(1900) && cut_after < Duration::from_millis(2600),
        "{cut_after:?}"
    );
    let error = error_of(&cut);
    assert_eq!(error["kind"], "timeout");
    assert_eq!(error["attempts"], 2);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("did not finish within its deadline of 2 s after 2 attempts"),
        "{message}"
    );
    assert!(
        message.contains("the last failure before it: upstream_unavailable"),
        "{message}"
    );
    tokio::join!(hw.stop(), hs.stop());
}

/// Makes a call and returns its result and how long it took.
async fn timed(h: &Harness, text: &str) -> (CallToolResult, Duration) {
    let started = Instant::now();
    let (result, _) = h.generate(prompt(text)).await;
    (result, started.elapsed())
}

// ---- cancellation -------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_mid_request_closes_the_upstream_connection_and_saves_nothing() {
    let fake = FakeUpstream::start(vec![
        json_reply(Duration::from_secs(10)),
        json_reply(Duration::ZERO),
    ])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let mut handle = h.send(prompt("never mind")).await;
    let early = tokio::time::timeout(Duration::from_millis(500), &mut handle.rx).await;
    assert!(early.is_err(), "the call is still running");
    assert_eq!(fake.count(), 1, "the request reached the upstream");
    let cancelled = Instant::now();
    handle
        .cancel(Some("the test gave up".into()))
        .await
        .unwrap();

    let closed = fake
        .abandoned_at(Duration::from_secs(3))
        .await
        .expect("the upstream saw the connection close");
    let latency = closed.saturating_duration_since(cancelled);
    eprintln!("cancellation mid-request: upstream connection closed {latency:?} after the cancel");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let logged = h.logged("cancelled", Duration::from_secs(2)).await;
    assert!(
        logged.is_some(),
        "the server logged the cancellation: {:#?}",
        h.log.lock().unwrap()
    );
    assert!(h.saved_files().is_empty(), "{:?}", h.saved_files());

    let (result, _) = h.generate(prompt("still serving")).await;
    assert_success(&result);
    assert_eq!(fake.count(), 2);
    assert_eq!(h.saved_files().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn cancelling_mid_backoff_ends_the_wait_and_the_retry_never_comes() {
    let upstream = Scripted::start(vec![
        fixed(server_error(500).insert_header("retry-after", "10")),
        ok(),
    ])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    // Dropping rmcp's `call_tool` future sends `notifications/cancelled`.
    let params = CallToolRequestParams::new("generate_image")
        .with_arguments(args(prompt("a long wait, abandoned")));
    let gave_up =
        tokio::time::timeout(Duration::from_millis(500), h.client.call_tool(params)).await;
    assert!(gave_up.is_err(), "the call was still waiting");
    let cancelled = Instant::now();
    assert!(
        h.all_messages()
            .iter()
            .any(|m| m.starts_with("retry 1 in 10.0 s")),
        "the call was in its backoff: {:?}",
        h.all_messages()
    );
    let logged = h
        .logged("cancelled", Duration::from_secs(3))
        .await
        .expect("the server logged the cancellation");
    let latency = logged.saturating_duration_since(cancelled);
    eprintln!("cancellation mid-backoff: the server ended the call {latency:?} after the cancel");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // Past the moment the retry would have been sent.
    let first = upstream.arrivals()[0];
    tokio::time::sleep_until((first + Duration::from_millis(10_500)).into()).await;
    assert_eq!(upstream.requests(), 1, "the abandoned retry never came");
    assert!(h.saved_files().is_empty());

    let (result, _) = h.generate(prompt("still serving")).await;
    assert_success(&result);
    assert_eq!(upstream.requests(), 2);
    h.stop().await;
}

#[tokio::test]
async fn cancelling_mid_stream_removes_the_partial_images_already_saved() {
    let fake = FakeUpstream::start(vec![
        Reply::sse(vec![
            partial(0, 16),
            Chunk::Pause(Duration::from_secs(10)),
            completed(64),
        ]),
        json_reply(Duration::ZERO),
    ])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let mut handle = h
        .send(json!({"prompt": "a stream, abandoned", "partial_images": 2}))
        .await;
    let token = handle.progress_token.clone();
    let until = Instant::now() + Duration::from_secs(5);
    let uri = loop {
        let found = h.notes(&token).iter().find_map(|n| partial_uri(&n.message));
        if let Some(uri) = found {
            break uri;
        }
        assert!(Instant::now() < until, "no partial image was announced");
        let early = tokio::time::timeout(Duration::from_millis(20), &mut handle.rx).await;
        assert!(early.is_err(), "the call ended early: {early:?}");
    };
    assert_eq!(h.saved_files().len(), 1, "the partial was saved");
    assert_eq!(png_width(&h.read_image(&uri).await), 16);
    handle.cancel(Some("enough".into())).await.unwrap();

    assert!(
        fake.abandoned_at(Duration::from_secs(3)).await.is_some(),
        "the stream was closed"
    );
    let until = Instant::now() + Duration::from_secs(2);
    while !h.saved_files().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        h.saved_files().is_empty(),
        "the partial was removed: {:?}",
        h.saved_files()
    );
    let (result, _) = h.generate(prompt("still serving")).await;
    assert_success(&result);
    h.stop().await;
}

// ---- progress -----------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_upstream_gets_progress_at_least_every_five_seconds_and_none_after_the_result() {
    let upstream = Scripted::start(vec![fixed(
        ResponseTemplate::new(200)
            .set_body_json(ok_body(64))
            .set_delay(Duration::from_secs(12)),
    )])
    .await;
    let h = Harness::start(openai(&upstream.base(), "")).await;
    let sent = Instant::now();
    let handle = h.send(prompt("take your time")).await;
    let token = handle.progress_token.clone();
    let result = answer(handle).await;
    let done = Instant::now();
    assert_success(&result);
    assert!(done - sent >= Duration::from_secs(12));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let notes = h.notes(&token);
    assert!(notes.len() >= 4, "{notes:?}");
    let late: Vec<_> = notes
        .iter()
        .filter(|n| n.at > done + Duration::from_millis(100))
        .collect();
    assert!(late.is_empty(), "progress after the result: {late:?}");
    assert!(
        notes.windows(2).all(|w| w[0].progress < w[1].progress),
        "strictly increasing"
    );
    let max_gap = largest_silence(sent, &notes, done);
    eprintln!(
        "progress: {} notifications over {:?}, largest gap {max_gap:?}",
        notes.len(),
        done - sent
    );
    assert!(max_gap <= Duration::from_secs(5), "gap of {max_gap:?}");
    assert!(
        notes.iter().any(|n| n.message.contains("s elapsed")),
        "heartbeats say how long it has been: {notes:?}"
    );
    h.stop().await;
}

/// The longest time the client heard nothing, from the request to the result.
fn largest_silence(sent: Instant, notes: &[Note], done: Instant) -> Duration {
    let mut times: Vec<Instant> = std::iter::once(sent)
        .chain(notes.iter().map(|n| n.at))
        .collect();
    times.sort();
    times.push(done);
    times
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// The bar: a 2-minute generation keeps a client with a 60 s idle timeout alive. It
/// runs at a tenth of the scale: the server's heartbeat variable sets a 300 ms heartbeat, and
/// every span of the original (the 120 s call, the 60 s idle timeout, the 5 s bound) shrinks
/// by the same factor, so the call still lasts 40 heartbeats and must never fall silent for
/// longer than the scaled bound. The default heartbeat's bound is proven by the test above.
#[tokio::test]
async fn a_two_minute_generation_never_leaves_a_client_idle_for_60_seconds() {
    /// The heartbeat in use, a tenth of the real 3 s one.
    const BEAT: Duration = Duration::from_millis(300);
    let scale = |real: Duration| real.mul_f64(BEAT.as_secs_f64() / HEARTBEAT.as_secs_f64());
    let call = scale(Duration::from_secs(120));
    let upstream = Scripted::start(vec![fixed(
        ResponseTemplate::new(200)
            .set_body_json(ok_body(64))
            .set_delay(call),
    )])
    .await;
    let beat_ms = BEAT.as_millis().to_string();
    let h = Harness::start_full(
        openai(&upstream.base(), ""),
        ProtocolVersion::V_2025_11_25,
        &[(HEARTBEAT_VAR, &beat_ms)],
    )
    .await;
    let sent = Instant::now();
    let handle = h.send(prompt("a slow masterpiece")).await;
    let token = handle.progress_token.clone();
    let result = answer(handle).await;
    let done = Instant::now();
    assert_success(&result);
    let notes = h.notes(&token);
    let max_gap = largest_silence(sent, &notes, done);
    eprintln!(
        "2-minute call at scale {call:?}: {} messages, largest silence {max_gap:?}",
        notes.len()
    );
    assert!(done - sent >= call);
    assert!(
        notes.len() >= 30,
        "a heartbeat all along the call: {notes:?}"
    );
    assert!(
        max_gap < scale(Duration::from_secs(60)),
        "idle for {max_gap:?}"
    );
    assert!(
        max_gap <= scale(Duration::from_secs(5)),
        "idle for {max_gap:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_stateless_revision_gets_progress_and_cancellation_too() {
    let upstream = Scripted::start(vec![
        fixed(server_error(500)),
        ok(),
        fixed(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(64))
                .set_delay(Duration::from_secs(10)),
        ),
    ])
    .await;
    let h =
        Harness::start_speaking(openai(&upstream.base(), ""), ProtocolVersion::V_2026_07_28).await;
    let (result, token) = h.generate(prompt("stateless")).await;
    assert_success(&result);
    let messages: Vec<_> = h.notes(&token).into_iter().map(|n| n.message).collect();
    assert!(
        messages.iter().any(|m| m == "requesting (attempt 2)"),
        "{messages:?}"
    );

    let params = CallToolRequestParams::new("generate_image")
        .with_arguments(args(prompt("stateless, abandoned")));
    let gave_up =
        tokio::time::timeout(Duration::from_millis(500), h.client.call_tool(params)).await;
    assert!(gave_up.is_err());
    assert_eq!(upstream.requests(), 3);
    assert!(
        h.logged("cancelled", Duration::from_secs(2))
            .await
            .is_some(),
        "the server cancelled the call"
    );
    assert_eq!(h.saved_files().len(), 1, "only the first call's image");
    h.stop().await;
}

// ---- streamed partial images --------------------------------------------------------------

/// The `imagegen://images/...` URI in a "partial image N received" message.
fn partial_uri(message: &str) -> Option<String> {
    let at = message.find("imagegen://images/")?;
    Some(message[at..].split_whitespace().next()?.to_string())
}

#[tokio::test]
async fn partial_images_are_linked_in_progress_in_order_and_readable() {
    let fake = FakeUpstream::start(vec![Reply::sse(vec![
        partial(0, 16),
        Chunk::Pause(Duration::from_millis(300)),
        partial(1, 32),
        Chunk::Pause(Duration::from_millis(300)),
        completed(64),
    ])])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let (result, token) = h
        .generate(json!({"prompt": "a lighthouse, slowly", "partial_images": 2}))
        .await;
    let s = assert_success(&result);
    let sent = fake.requests()[0].json().unwrap_or(Value::Null);
    assert_eq!(
        (&sent["stream"], &sent["partial_images"]),
        (&json!(true), &json!(2))
    );

    let notes = h.notes(&token);
    let partials: Vec<(usize, String)> = notes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.message.starts_with("partial image "))
        .map(|(i, n)| (i, n.message.clone()))
        .collect();
    assert_eq!(partials.len(), 2, "{notes:?}");
    assert!(partials[0]
        .1
        .starts_with("partial image 1 received: imagegen://images/"));
    assert!(partials[1]
        .1
        .starts_with("partial image 2 received: imagegen://images/"));
    assert!(partials[0].0 < partials[1].0, "in order");
    let uris: Vec<String> = partials
        .iter()
        .map(|(_, m)| partial_uri(m).unwrap())
        .collect();
    for (uri, side) in uris.iter().zip([16, 32]) {
        assert_eq!(png_width(&h.read_image(uri).await), side, "{uri}");
    }

    let listed: Vec<&str> = s["partial_images"]
        .as_array()
        .expect("partial_images listed")
        .iter()
        .map(|p| p["uri"].as_str().unwrap())
        .collect();
    assert_eq!(listed, uris);
    assert_eq!(s["images"][0]["width"], 64);
    assert_eq!(s["usage"]["total_tokens"], 352);
    let final_uri = s["images"][0]["uri"].as_str().unwrap();
    assert_eq!(png_width(&h.read_image(final_uri).await), 64);
    h.stop().await;
}

#[tokio::test]
async fn a_stream_whose_final_image_comes_first_ends_at_once() {
    let fake = FakeUpstream::start(vec![Reply::sse(vec![
        partial(0, 16),
        completed(64),
        Chunk::Pause(Duration::from_secs(5)),
        partial(1, 32),
    ])])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let started = Instant::now();
    let (result, token) = h
        .generate(json!({"prompt": "final first", "partial_images": 2}))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let s = assert_success(&result);
    assert_eq!(s["images"][0]["width"], 64);
    assert_eq!(s["partial_images"].as_array().map(Vec::len), Some(1));
    let partial_notes: Vec<_> = h
        .notes(&token)
        .into_iter()
        .filter(|n| n.message.starts_with("partial image"))
        .collect();
    assert_eq!(partial_notes.len(), 1, "{partial_notes:?}");
    assert!(
        fake.abandoned_at(Duration::from_secs(2)).await.is_some(),
        "the rest of the stream was not waited for"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_error_event_mid_stream_is_a_structured_error() {
    let fake = FakeUpstream::start(vec![Reply::sse(vec![
        partial(0, 16),
        event(
            "error",
            json!({"type": "error", "error": {"type": "image_generation_user_error",
                   "code": "moderation_blocked",
                   "message": "Your request was rejected by the safety system."}}),
        ),
    ])])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let (result, _) = h
        .generate(json!({"prompt": "something refused", "partial_images": 2}))
        .await;
    let error = error_of(&result);
    assert_eq!(error["kind"], "content_policy");
    assert_eq!(error["retryable"], false);
    assert_eq!(error["provider_code"], "moderation_blocked");
    assert_eq!(error["attempts"], 1);
    assert_eq!(error["request_id"], "req_fake_1");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("rephrase"), "{message}");
    assert_eq!(fake.count(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_failed_stream_leaves_no_partial_images_behind() {
    let fake = FakeUpstream::start(vec![Reply::sse(vec![
        partial(0, 16),
        event(
            "error",
            json!({"type": "error", "error": {"type": "image_generation_user_error",
                   "code": "moderation_blocked", "message": "Rejected by the safety system."}}),
        ),
    ])])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let (result, token) = h
        .generate(json!({"prompt": "something refused", "partial_images": 2}))
        .await;
    error_of(&result);
    let announced = h
        .notes(&token)
        .iter()
        .any(|n| n.message.starts_with("partial image 1 received"));
    assert!(
        announced,
        "the partial was saved and linked while the call ran"
    );
    assert!(
        h.saved_files().is_empty(),
        "a failed call keeps nothing, like a cancelled one: {:?}",
        h.saved_files()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_stream_that_drops_midway_is_retried_and_the_second_attempt_succeeds() {
    let fake = FakeUpstream::start(vec![
        Reply::sse(vec![
            partial(0, 16),
            Chunk::Pause(Duration::from_millis(50)),
            Chunk::Drop,
        ]),
        Reply::sse(vec![partial(0, 16), partial(1, 32), completed(64)]),
    ])
    .await;
    let h = Harness::start(openai(&fake.base(), "")).await;
    let (result, token) = h
        .generate(json!({"prompt": "a flaky proxy", "partial_images": 2}))
        .await;
    let s = assert_success(&result);
    assert_eq!(s["images"][0]["width"], 64);
    assert_eq!(fake.count(), 2);
    let messages: Vec<_> = h.notes(&token).into_iter().map(|n| n.message).collect();
    assert!(
        messages.iter().any(|m| m.starts_with("retry 1 in")
            && m.contains("stream ended before the image was complete")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "requesting (attempt 2)"),
        "{messages:?}"
    );
    h.stop().await;
}

// ---- bounds on calls in flight ------------------------------------------------------------

/// Six calls at once against an upstream taking 300 ms each: the most it sees at once, how
/// many calls were told they wait for a slot, and whether all succeeded.
async fn six_calls_at_once(extra: &str, whose: &str) {
    let fake = FakeUpstream::start(vec![json_reply(Duration::from_millis(300))]).await;
    let h = Harness::start(openai(&fake.base(), extra)).await;
    let started = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..6 {
        let handle = h.send(prompt(&format!("call {i}"))).await;
        let token = handle.progress_token.clone();
        calls.spawn(async move { (answer(handle).await, token) });
    }
    let mut waited = 0;
    while let Some(joined) = calls.join_next().await {
        let (result, token) = joined.unwrap();
        assert_success(&result);
        let waiting = format!("waiting for a slot ({whose} limit of 2 calls in flight is reached)");
        if h.notes(&token).iter().any(|n| n.message == waiting) {
            waited += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(fake.count(), 6);
    assert_eq!(
        fake.peak_in_flight(),
        2,
        "{extra}: the upstream saw at most 2 at once, and the limit was used"
    );
    assert_eq!(waited, 4, "{extra}: four calls were told they wait");
    assert!(
        elapsed >= Duration::from_millis(900),
        "three rounds: {elapsed:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_server_wide_limit_bounds_upstream_concurrency() {
    six_calls_at_once("[limits]\nmax_in_flight = 2", "the server's").await;
}

#[tokio::test]
async fn the_provider_limit_bounds_upstream_concurrency() {
    six_calls_at_once("max_in_flight = 2", "the provider's").await;
}

// ---- what error results carry -------------------------------------------------------------

/// Checks the fields every error result has, and returns the error.
fn checked_error(result: &CallToolResult, provider: &str) -> Value {
    let error = error_of(result);
    for field in ["kind", "message", "at"] {
        assert!(error[field].is_string(), "{field}: {error}");
    }
    assert!(error["retryable"].is_boolean(), "{error}");
    assert_eq!(error["provider"], provider, "{error}");
    assert_eq!(error["model"], "gpt-image-2.6-flare", "{error}");
    let at = error["at"].as_str().unwrap();
    let parsed = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("`at` = {at} is not RFC 3339: {e}"));
    assert!(parsed.offset().is_utc(), "{at}");
    let age = time::OffsetDateTime::now_utc() - parsed;
    assert!(age.whole_seconds().abs() < 60, "{at}");
    let text = text_of(result);
    assert!(
        text.contains(error["message"].as_str().unwrap()),
        "the text block carries the message: {text}"
    );
    let whole = serde_json::to_string(result).unwrap();
    assert!(
        !whole.contains(KEY) && !whole.contains("SECRET"),
        "the key leaked: {whole}"
    );
    error
}

#[tokio::test]
async fn error_results_carry_what_a_client_needs_to_act() {
    let server = MockServer::start().await;
    mount(
        &server,
        "/refuse",
        vec![fixed(api_error(
            400,
            "image_generation_user_error",
            "moderation_blocked",
            "Your request was rejected as a result of our safety system.",
        ))],
    )
    .await;
    mount(
        &server,
        "/reject",
        vec![fixed(api_error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        ))],
    )
    .await;
    mount(
        &server,
        "/limit",
        vec![fixed(rate_limited().insert_header("retry-after", "30"))],
    )
    .await;
    mount(&server, "/down", vec![fixed(server_error(503))]).await;
    let mut config = String::from("default_provider = \"refuse\"\n");
    for name in ["refuse", "reject", "limit", "down"] {
        config.push_str(&format!(
            "[providers.{name}]\nkind = \"openai\"\napi_key = \"{KEY}\"\n\
             base_url = \"{}/{name}/v1\"\nmax_retries = 0\n",
            server.uri()
        ));
    }
    let h = Harness::start(config).await;
    let call = |provider: &'static str| h.generate(json!({"prompt": "x", "provider": provider}));

    let (refused, _) = call("refuse").await;
    let error = checked_error(&refused, "refuse");
    assert_eq!(error["kind"], "content_policy");
    assert_eq!(error["retryable"], false);
    assert_eq!(
        (
            &error["status"],
            &error["provider_code"],
            &error["request_id"],
            &error["attempts"]
        ),
        (
            &json!(400),
            &json!("moderation_blocked"),
            &json!("req_400_moderation_blocked"),
            &json!(1)
        )
    );
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("refused") && message.contains("rephrase"),
        "{message}"
    );

    let (rejected, _) = call("reject").await;
    let error = checked_error(&rejected, "reject");
    assert_eq!(error["kind"], "auth");
    assert_eq!(error["retryable"], false);
    assert_eq!(
        (
            &error["status"],
            &error["provider_code"],
            &error["request_id"],
            &error["attempts"]
        ),
        (
            &json!(401),
            &json!("invalid_api_key"),
            &json!("req_401_invalid_api_key"),
            &json!(1)
        )
    );
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(FINGERPRINT),
        "names the key by fingerprint: {message}"
    );
    assert!(
        message.contains("127.0.0.1"),
        "names where it was sent: {message}"
    );

    let (limited, _) = call("limit").await;
    let error = checked_error(&limited, "limit");
    assert_eq!(error["kind"], "rate_limited");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["retry_after_s"], 30);
    assert_eq!(
        (
            &error["status"],
            &error["provider_code"],
            &error["request_id"],
            &error["attempts"]
        ),
        (
            &json!(429),
            &json!("rate_limit_exceeded"),
            &json!("req_429_rate_limit_exceeded"),
            &json!(1)
        )
    );
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("asked to wait 30 s"), "{message}");
    assert!(
        text_of(&limited).contains("Try again in 30 s"),
        "{}",
        text_of(&limited)
    );

    let (down, _) = call("down").await;
    let error = checked_error(&down, "down");
    assert_eq!(error["kind"], "upstream_unavailable");
    assert_eq!(error["retryable"], true);
    assert_eq!(
        (&error["status"], &error["request_id"], &error["attempts"]),
        (&json!(503), &json!("req_503_server_error"), &json!(1))
    );
    assert!(
        text_of(&down).contains("This may succeed if retried"),
        "{}",
        text_of(&down)
    );

    // Refused before any request: no attempts, no status, but the rest is there.
    let (invalid, _) = h
        .generate(json!({"prompt": "x", "provider": "refuse", "size": "999x999"}))
        .await;
    let error = checked_error(&invalid, "refuse");
    assert_eq!(error["kind"], "invalid_request");
    assert_eq!(error["param"], "size");
    for absent in ["attempts", "status", "request_id"] {
        assert!(error.get(absent).is_none(), "{absent}: {error}");
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
    h.stop().await;
}

// ---- the mock provider's scripted failures ------------------------------------------------

#[tokio::test]
async fn the_mock_fail_sequence_fails_the_first_call_and_does_not_retry_it() {
    // The mock provider has no retry loop: each call takes the next outcome of the sequence,
    // so `["rate_limited", "ok"]` fails the first call (saying when to come back) and lets the
    // second succeed; a client has to make the retry itself.
    let h = Harness::start(
        "default_provider = \"mock\"\n[providers.mock]\nfail_sequence = [\"rate_limited\", \"ok\"]\n"
            .into(),
    )
    .await;
    let request = json!({"prompt": "scripted", "size": "64x64"});
    let (first, _) = h.generate(request.clone()).await;
    let error = error_of(&first);
    assert_eq!(error["kind"], "rate_limited");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["retry_after_s"], 1);
    assert_eq!(error["attempts"], 1, "no retry inside the call");
    assert_eq!(error["provider"], "mock");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("call 1 of fail_sequence"),
        "{error}"
    );
    assert!(h.saved_files().is_empty());

    let (second, _) = h.generate(request.clone()).await;
    assert_success(&second);
    let (third, _) = h.generate(request).await;
    assert_success(&third);
    assert_eq!(h.saved_files().len(), 2);
    h.stop().await;
}
