//! The real binary served over streamable HTTP (`serve --http`, loopback only): rmcp's client in
//! both protocol revisions, bearer tokens and their rotation, Origin and body limits, the
//! refusal to serve a network address open, the probes, and a graceful SIGTERM.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub(crate) use crate::common::http_server::HttpServer;
use crate::common::{args, binary};
use rmcp::{
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, ClientConfig, ClientRequest,
        ProgressNotificationParam, ProgressToken, ProtocolVersion, ReadResourceRequestParams,
        ResourceContents, ServerResult,
    },
    service::{
        ClientLifecycleMode, ClientServiceExt as _, NotificationContext, PeerRequestOptions,
        RequestHandle, RunningService,
    },
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ClientHandler, RoleClient,
};
use serde_json::{json, Value};

/// A bearer token that must never appear in any output.
const TOKEN: &str = "imagegen-SENTINEL-token-7d41c0ffee9b";
/// The token after a rotation.
const ROTATED: &str = "imagegen-rotated-token-52aa81e0";

/// An `initialize` request body: a valid first message for any session-mode server.
pub(crate) const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;

/// One progress notification as the client received it.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    token: ProgressToken,
}

/// A client speaking `version` that records the progress notifications it receives.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
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
        });
    }
}

/// rmcp's client connected to `url` with `token`, speaking `version`: a 2025-11-25 client opens
/// a session with `initialize`; a 2026-07-28 one asks `server/discover` and sends stateless
/// requests, each carrying its version.
pub(crate) async fn connect(
    url: &str,
    token: &str,
    version: ProtocolVersion,
) -> (RunningService<RoleClient, Recorder>, Arc<Mutex<Vec<Note>>>) {
    let notes = Arc::new(Mutex::new(Vec::new()));
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(token),
    );
    let lifecycle = if version.has_initialize() {
        ClientLifecycleMode::Initialize
    } else {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![version.clone()],
        }
    };
    let client = Recorder {
        notes: notes.clone(),
        version: version.clone(),
    }
    .serve_with_lifecycle(transport, lifecycle)
    .await
    .expect("MCP over HTTP connects");
    let negotiated = client.peer_info().map(|info| info.protocol_version.clone());
    assert_eq!(
        negotiated,
        Some(version),
        "the revision the server agreed to"
    );
    (client, notes)
}

/// Sends a `generate_image` call; the handle knows its progress token.
pub(crate) async fn send(
    client: &RunningService<RoleClient, Recorder>,
    arguments: Value,
) -> RequestHandle<RoleClient> {
    let params = CallToolRequestParams::new("generate_image").with_arguments(args(arguments));
    client
        .peer()
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("request sent")
}

pub(crate) async fn answer(handle: RequestHandle<RoleClient>) -> CallToolResult {
    match handle.await_response().await.expect("a response") {
        ServerResult::CallToolResult(result) => result,
        other => panic!("not a tool result: {other:?}"),
    }
}

/// A raw POST of `body` to `/mcp` with `headers`, as a client that speaks MCP would send it.
pub(crate) async fn post(
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("the server answers")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `[[server.auth.tokens]]` for `alice`, reading `file`.
fn token_config(file: &Path) -> String {
    format!(
        "[[server.auth.tokens]]\nname = \"alice\"\ntoken_file = {:?}\n",
        file.to_str().unwrap()
    )
}

/// A token file holding `token`, in a directory of its own.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

#[tokio::test]
async fn rmcp_client_lists_calls_with_progress_and_reads_over_http_in_both_revisions() {
    let secrets = tempfile::tempdir().unwrap();
    let file = token_file(secrets.path(), TOKEN);
    let mut server = HttpServer::start_mock(
        &format!(
            "{}[providers.mock]\nlatency_ms = 300\n[output]\ndelivery = \"preview\"\n",
            token_config(&file)
        ),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let mut shown = String::new();
    for version in [ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2026_07_28] {
        let (client, notes) = connect(&server.mcp(), TOKEN, version.clone()).await;
        let tools = client.list_all_tools().await.unwrap();
        let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "create_variation",
                "delete_image",
                "edit_image",
                "find_images",
                "gallery_page",
                "generate_image",
                "generate_images",
                "list_providers"
            ],
            "{version:?}"
        );
        let handle = send(
            &client,
            json!({"prompt": "a lighthouse", "size": "256x256"}),
        )
        .await;
        let token = handle.progress_token.clone();
        let result = answer(handle).await;
        assert_ne!(result.is_error, Some(true), "{version:?}: {result:?}");
        let progress = notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.token == token)
            .count();
        assert!(progress > 0, "{version:?}: no progress notifications");
        let image = &result.structured_content.as_ref().unwrap()["images"][0];
        let saved = std::fs::read(image["path"].as_str().unwrap()).unwrap();
        let read = client
            .read_resource(ReadResourceRequestParams::new(
                image["uri"].as_str().unwrap(),
            ))
            .await
            .unwrap();
        let ResourceContents::BlobResourceContents { blob, .. } = &read.contents[0] else {
            panic!("a blob: {read:?}");
        };
        assert_eq!(crate::common::unb64(blob), saved, "{version:?}");
        shown.push_str(&serde_json::to_string(&result).unwrap());
        shown.push_str(&serde_json::to_string(&read).unwrap());

        // A call for a provider that does not exist fails, and its log names the caller.
        let failed = answer(send(&client, json!({"prompt": "x", "provider": "nope"})).await).await;
        assert_eq!(failed.is_error, Some(true));
        shown.push_str(&serde_json::to_string(&failed).unwrap());
        client.cancel().await.unwrap();
    }
    // The calls show in the metrics, which take the same token.
    let metrics = format!("{}/metrics", server.base);
    let refused = reqwest::get(&metrics).await.unwrap();
    assert_eq!(refused.status(), 401);
    let text = reqwest::Client::new()
        .get(&metrics)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok = text.lines().find(|l| {
        l.starts_with("imagegen_tool_calls_total{")
            && l.contains("tool=\"generate_image\"")
            && l.contains("provider=\"mock\"")
            && l.contains("outcome=\"ok\"")
    });
    assert_eq!(ok.and_then(|l| l.rsplit(' ').next()), Some("2"), "{text}");
    let failed = text.lines().any(|l| {
        l.starts_with("imagegen_tool_calls_total{")
            && l.contains("tool=\"generate_image\"")
            && !l.contains("outcome=\"ok\"")
    });
    assert!(failed, "the failed calls are not counted: {text}");
    assert!(text.contains("imagegen_tool_calls_in_flight 0"), "{text}");
    server.terminate().await;
    assert_eq!(server.exit_code().await, Some(0), "{}", server.output());
    let output = server.output();
    assert!(output.contains("caller=alice"), "{output}");
    for text in [&output, &shown] {
        assert!(!text.contains("SENTINEL"), "the token leaked: {text}");
    }
}

#[tokio::test]
async fn a_session_answers_only_the_caller_that_opened_it() {
    let secrets = tempfile::tempdir().unwrap();
    let alice = token_file(secrets.path(), TOKEN);
    let bob = secrets.path().join("bob");
    std::fs::write(&bob, format!("{ROTATED}\n")).unwrap();
    let config = format!(
        "{}[[server.auth.tokens]]\nname = \"bob\"\ntoken_file = {:?}\n",
        token_config(&alice),
        bob.to_str().unwrap()
    );
    let server = HttpServer::start_mock(&config, &[]).await;
    let url = server.mcp();
    let opened = post(&url, INITIALIZE, &[("authorization", &bearer(TOKEN))]).await;
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let send_as = |token: &'static str| {
        let (url, session) = (url.clone(), session.clone());
        async move {
            let headers = [
                ("authorization", bearer(token)),
                ("mcp-session-id", session),
                ("mcp-protocol-version", "2025-11-25".to_string()),
            ];
            let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(&url, list, &headers).await.status()
        }
    };
    assert_eq!(send_as(ROTATED).await, 404, "bob used alice's session");
    assert!(
        send_as(TOKEN).await.is_success(),
        "alice lost her own session"
    );
    assert!(server.output().contains("another caller's session"));
}

#[tokio::test]
async fn tokens_are_required_checked_and_rotated_with_their_file() {
    let secrets = tempfile::tempdir().unwrap();
    let file = token_file(secrets.path(), TOKEN);
    let server = HttpServer::start_mock(&token_config(&file), &[]).await;
    let url = server.mcp();

    let missing = post(&url, INITIALIZE, &[]).await;
    assert_eq!(missing.status(), 401);
    let challenge = missing.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    let wrong = post(
        &url,
        INITIALIZE,
        &[("authorization", "Bearer not-the-token")],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let challenge = wrong.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    let basic = post(&url, INITIALIZE, &[("authorization", "Basic YWxpY2U6eA==")]).await;
    assert_eq!(basic.status(), 401);

    let right = post(&url, INITIALIZE, &[("authorization", &bearer(TOKEN))]).await;
    assert_eq!(right.status(), 200);
    // The probes need no token.
    for probe in ["healthz", "readyz"] {
        let answer = reqwest::get(format!("{}/{probe}", server.base))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{probe}");
    }

    // Rotation: the file is rewritten; once the reload has read it, only the new token works.
    std::fs::write(&file, format!("{ROTATED}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rotated = post(&url, INITIALIZE, &[("authorization", &bearer(ROTATED))]).await;
        if rotated.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated token never worked:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = post(&url, INITIALIZE, &[("authorization", &bearer(TOKEN))]).await;
    assert_eq!(
        old.status(),
        401,
        "the old token still works after the rotation"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.base))
        .bearer_auth(ROTATED)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("imagegen_config_reloads_total{outcome=\"published\"}")),
        "{metrics}"
    );
    let output = server.output();
    assert!(output.contains("configuration reloaded"), "{output}");
    assert!(
        !output.contains("SENTINEL") && !output.contains(ROTATED),
        "{output}"
    );
}

#[tokio::test]
async fn foreign_origins_and_oversized_bodies_are_refused() {
    let secrets = tempfile::tempdir().unwrap();
    let file = token_file(secrets.path(), TOKEN);
    let server = HttpServer::start_mock(
        &format!(
            "{}[server.http]\nmax_body_mb = 1\nallowed_origins = [\"http://app.example:*\"]\n",
            token_config(&file)
        ),
        &[],
    )
    .await;
    let url = server.mcp();
    let auth = bearer(TOKEN);
    let foreign = post(
        &url,
        INITIALIZE,
        &[("authorization", &auth), ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(foreign.status(), 403);
    let allowed = post(
        &url,
        INITIALIZE,
        &[
            ("authorization", &auth),
            ("origin", "http://app.example:3000"),
        ],
    )
    .await;
    assert_eq!(allowed.status(), 200);
    // A Host that is neither loopback nor allowed: the DNS-rebinding guard stays on.
    let rebound = post(
        &url,
        INITIALIZE,
        &[("authorization", &auth), ("host", "attacker.example")],
    )
    .await;
    assert_eq!(rebound.status(), 403);

    // Over the cap: declared by Content-Length, and streamed without one.
    let big = vec![b' '; (1 << 20) + 10];
    let declared = post(&url, big.clone(), &[("authorization", &auth)]).await;
    assert_eq!(declared.status(), 413);
    let text = declared.text().await.unwrap();
    assert!(text.contains("server.http.max_body_mb"), "{text}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let streamed = post(
        &url,
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(streamed.status(), 413);
    let text = streamed.text().await.unwrap();
    assert!(text.contains("server.http.max_body_mb"), "{text}");
}

#[tokio::test]
async fn a_network_address_without_authentication_refuses_to_start() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = binary(home.path(), &[]);
    cmd.args(["serve", "--http", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("it exits")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without authentication")
            && stderr.contains("server.auth.allow_unauthenticated = true"),
        "{stderr}"
    );
    // Set on purpose, it starts (and stops on SIGTERM).
    let mut server =
        HttpServer::start_mock("[server.auth]\nallow_unauthenticated = true\n", &[]).await;
    server.terminate().await;
    assert_eq!(server.exit_code().await, Some(0));
}

#[tokio::test]
async fn sigterm_lets_the_call_in_flight_finish_then_exits_zero() {
    let mut server = HttpServer::start_mock(
        "[providers.mock]\nlatency_ms = 2000\n[server]\nshutdown_grace_s = 20\n",
        &[],
    )
    .await;
    let (client, notes) = connect(&server.mcp(), "", ProtocolVersion::V_2026_07_28).await;
    let handle = send(&client, json!({"prompt": "slow", "size": "256x256"})).await;
    let token = handle.progress_token.clone();
    // The call is running once its first heartbeat arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !notes.lock().unwrap().iter().any(|n| n.token == token) {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.terminate().await;
    let readyz = format!("{}/readyz", server.base);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = reqwest::get(&readyz)
            .await
            .map(|r| r.status().as_u16())
            .ok();
        if status == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said 503: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No new calls while draining.
    let refused = post(&server.mcp(), INITIALIZE, &[]).await;
    assert_eq!(refused.status(), 503, "{}", server.output());
    let result = match tokio::time::timeout(Duration::from_secs(20), answer(handle)).await {
        Ok(result) => result,
        Err(_) => panic!("no answer after SIGTERM:\n{}", server.output()),
    };
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(server.exit_code().await, Some(0), "{}", server.output());
    drop(client);
    let _ = &server.home;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_call_cancels_it_and_nothing_is_saved() {
    // 2026-07-28: the response stream is the request, so dropping it cancels the call.
    // 2025-11-25: a dropped stream may be resumed (the spec says it is not a cancellation),
    // so the call ends when the leaving client closes its session (DELETE).
    for version in [ProtocolVersion::V_2026_07_28, ProtocolVersion::V_2025_11_25] {
        a_client_that_goes_away_mid_call(version).await;
    }
}

async fn a_client_that_goes_away_mid_call(version: ProtocolVersion) {
    let server = HttpServer::start_mock("[providers.mock]\nlatency_ms = 20000\n", &[]).await;
    let (client, notes) = connect(&server.mcp(), "", version.clone()).await;
    let handle = send(
        &client,
        json!({"prompt": "never finished", "size": "256x256"}),
    )
    .await;
    let token = handle.progress_token.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !notes.lock().unwrap().iter().any(|n| n.token == token) {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client leaves: its transport and the call's response stream are dropped.
    drop(handle);
    client.cancel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.output().contains("call cancelled") {
        assert!(
            Instant::now() < deadline,
            "{version}: the call was not cancelled:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let images = server.home.path().join(".local/share/imagegen-mcp/images");
    let saved = std::fs::read_dir(&images).map_or(0, |d| {
        // Files only: the usage ledger (`usage/`) records the cancelled call.
        d.filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.path().is_file() && !e.file_name().to_string_lossy().starts_with('.')
            })
        })
        .count()
    });
    assert_eq!(saved, 0, "{version}: a cancelled call saved images");
}

#[test]
fn token_settings_are_checked_and_tokens_never_shown() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| crate::common::load_config_in(dir.path(), text);
    let loaded = load(&format!(
        "[[server.auth.tokens]]\nname = \"alice\"\ntoken = \"{TOKEN}\"\n\
         [[server.auth.tokens]]\nname = \"bob\"\ntoken = \"other-token\"\n"
    ))
    .unwrap();
    let digest = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
    assert_eq!(loaded.caller_of(&digest(TOKEN)), Some("alice"));
    assert_eq!(loaded.caller_of(&digest("other-token")), Some("bob"));
    assert_eq!(loaded.caller_of(&digest("nobody")), None);
    for text in [format!("{loaded:?}"), loaded.show()] {
        assert!(!text.contains("SENTINEL"), "{text}");
    }
    for (config, says) in [
        (
            "[[server.auth.tokens]]\nname = \"a\"\ntoken = \"x\"\ntoken_file = \"t\"\n",
            "keep one",
        ),
        ("[[server.auth.tokens]]\nname = \"a\"\n", "needs `token_file`"),
        ("[[server.auth.tokens]]\ntoken = \"x\"\n", "needs a name"),
        (
            "[[server.auth.tokens]]\nname = \"a\"\ntoken = \"x\"\n[[server.auth.tokens]]\nname = \"a\"\ntoken = \"y\"\n",
            "names two tokens",
        ),
        (
            "[[server.auth.tokens]]\nname = \"a\"\ntoken = \"x\"\n[[server.auth.tokens]]\nname = \"b\"\ntoken = \"x\"\n",
            "the same as token `a`",
        ),
        ("[server.auth]\nallow_anyone = true\n", "allow_anyone"),
        ("[server.http]\nmax_body_mb = 0\n", "server.http.max_body_mb"),
    ] {
        let error = load(config).unwrap_err().to_string();
        assert!(error.contains(says), "{config}: {error}");
        assert!(!error.contains("SENTINEL"), "{error}");
    }
}
