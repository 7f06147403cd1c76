//! `imagegen-mcp serve --http` on an ephemeral loopback port, for tests of what an operator
//! sees: limits, metrics, logs. Its output is collected as it is written, in either log format.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rmcp::{
    model::{CallToolRequestParams, CallToolResult, ProtocolVersion},
    service::{ClientLifecycleMode, ClientServiceExt as _, RunningService},
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    RoleClient,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};

use super::{args, binary, VersionedClient};

/// A running server and everything it wrote to stderr.
pub struct HttpServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stderr: Arc<Mutex<Vec<String>>>,
    /// What it wrote to stdout: nothing is expected there over HTTP, and no secret may be.
    stdout: Arc<Mutex<Vec<String>>>,
    /// Its home directory (config file, images).
    pub home: tempfile::TempDir,
}

impl HttpServer {
    /// [`HttpServer::start`] with the mock as the default provider.
    pub async fn start_mock(config: &str, envs: &[(&str, &str)]) -> Self {
        Self::start(&format!("default_provider = \"mock\"\n{config}"), envs, &[]).await
    }

    /// Starts the server with `config` as its config file (plus a watcher that notices changes
    /// within a moment) and `args` before `serve`, and waits for it to log its URL.
    pub async fn start(config: &str, envs: &[(&str, &str)], args: &[&str]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("imagegen.toml");
        std::fs::write(
            &file,
            format!("{config}\n[reload]\npoll_s = 0\ndebounce_ms = 50\n"),
        )
        .unwrap();
        let mut envs = envs.to_vec();
        envs.push(("IMAGEGEN_HEARTBEAT_MS", "50"));
        if !envs.iter().any(|(k, _)| *k == "RUST_LOG") {
            envs.push(("RUST_LOG", "info"));
        }
        let mut cmd = binary(home.path(), &envs);
        cmd.arg("--config")
            .arg(&file)
            .args(args)
            .args(["serve", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn imagegen-mcp");
        let stdout: Arc<Mutex<Vec<String>>> = Arc::default();
        let (kept, stream) = (stdout.clone(), child.stdout.take().unwrap());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lines = stderr.clone();
        let stream = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut url = Some(tx);
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if line.contains("serving MCP over streamable HTTP") {
                    if let (Some(tx), Some(at)) = (url.take(), line.find("http://127.0.0.1:")) {
                        let found: String = line[at..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || ":/.".contains(*c))
                            .collect();
                        let _ = tx.send(found.trim_end_matches("/mcp").to_string());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let base = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(base)) => base,
            _ => panic!(
                "the server did not report its URL; stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            ),
        };
        Self {
            child,
            base,
            stderr,
            stdout,
            home,
        }
    }

    /// The config file.
    pub fn config_file(&self) -> std::path::PathBuf {
        self.home.path().join("imagegen.toml")
    }

    /// The MCP endpoint.
    pub fn mcp(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything written to stderr, then stdout, so far.
    pub fn output(&self) -> String {
        let mut all = self.lines();
        all.extend(self.stdout.lock().unwrap().iter().cloned());
        all.join("\n")
    }

    /// Sends SIGTERM.
    pub async fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server exits")
            .unwrap();
        status.code()
    }

    /// Waits up to 20 s for a stderr line containing `needle`.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics` with `token` (none when empty): the status and the body.
    pub async fn scrape(&self, token: &str) -> (u16, String) {
        let mut request = reqwest::Client::new().get(format!("{}/metrics", self.base));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Stops the process and waits for it.
    pub async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        self.output()
    }
}

/// rmcp's client on `url` with `token` (none when empty) and extra `headers`, speaking the
/// stateless 2026-07-28 revision.
pub async fn connect(
    url: &str,
    token: &str,
    headers: &[(&'static str, &str)],
) -> RunningService<RoleClient, VersionedClient> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if !token.is_empty() {
        config = config.auth_header(token);
    }
    for (name, value) in headers {
        config.custom_headers.insert(
            reqwest::header::HeaderName::from_static(name),
            reqwest::header::HeaderValue::from_str(value).unwrap(),
        );
    }
    let stateless = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    VersionedClient(ProtocolVersion::V_2026_07_28)
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            stateless,
        )
        .await
        .expect("MCP over HTTP connects")
}

/// Calls `tool` with `arguments` and returns its result.
pub async fn call(
    client: &RunningService<RoleClient, VersionedClient>,
    tool: &'static str,
    arguments: serde_json::Value,
) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args(arguments)))
        .await
        .expect("a tool result")
}

/// The value of the series of `metric` whose labels include every one of `labels`
/// (`name="value"` each), if it is listed.
pub fn series(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            &l[..name_end] == metric
        })
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A file holding `token` in `dir`, named `name`.
pub fn token_file(dir: &Path, name: &str, token: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}
