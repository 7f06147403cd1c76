//! Shared helpers for tests that drive the real `imagegen-mcp` binary.
#![allow(dead_code)]

pub mod http_server;
pub mod webdriver;

use std::{path::Path, process::Stdio};

use imagegen_providers::{
    mock::{MockProvider, MockSettings, MOCK_MODEL},
    GenerateRequest, ImageProviderExt,
};
use rmcp::{
    model::{ClientConfig, ProtocolVersion},
    service::RunningService,
    transport::{ConfigureCommandExt, TokioChildProcess},
    ClientHandler, RoleClient, ServiceExt,
};
use tokio::{io::AsyncReadExt, process::Command, task::JoinHandle};

/// A key that must never appear in any output.
pub const SENTINEL_KEY: &str = "sk-SENTINEL-do-not-leak-0123456789abcdef";

/// A client that asks for a given protocol revision.
#[derive(Debug, Clone)]
pub struct VersionedClient(pub ProtocolVersion);

impl ClientHandler for VersionedClient {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = self.0.clone();
        info
    }
}

/// The binary under test, with a clean environment rooted at `home`.
pub fn binary(home: &Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagegen-mcp"));
    cmd.env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        // The daily model check would add a `GET /models` to every fake upstream's request
        // log; the tests of that check turn it back on.
        .env("IMAGEGEN_CATALOG__CHECK_UPSTREAM", "false")
        .current_dir(home);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// A running server and a task collecting everything it wrote to stderr.
pub struct Server {
    pub client: RunningService<RoleClient, VersionedClient>,
    pub stderr: JoinHandle<String>,
    /// The server's process id (to send it signals).
    pub pid: Option<u32>,
}

impl Server {
    /// Starts `imagegen-mcp serve` with `envs` and connects a client speaking `version`.
    pub async fn start(home: &Path, envs: &[(&str, &str)], version: ProtocolVersion) -> Self {
        Self::start_with(home, &[], envs, version).await
    }

    /// Starts `imagegen-mcp serve ARGS...` (such as `--config FILE`) with `envs` and connects
    /// a client speaking `version`.
    pub async fn start_with(
        home: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        version: ProtocolVersion,
    ) -> Self {
        let cmd = binary(home, envs).configure(|c| {
            c.arg("serve").args(args);
        });
        let (transport, stderr) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imagegen-mcp");
        let pid = transport.id();
        let mut stderr = stderr.expect("stderr piped");
        let stderr = tokio::spawn(async move {
            let mut out = String::new();
            let _ = stderr.read_to_string(&mut out).await;
            out
        });
        let client = VersionedClient(version)
            .serve(transport)
            .await
            .expect("MCP handshake");
        Self {
            client,
            stderr,
            pid,
        }
    }

    /// Shuts the server down and returns its stderr.
    pub async fn stop(self) -> String {
        self.client.cancel().await.expect("cancel");
        tokio::time::timeout(std::time::Duration::from_secs(10), self.stderr)
            .await
            .expect("server exits after the client leaves")
            .expect("stderr task")
    }
}

/// Starts `imagegen-mcp serve --config imagegen.toml` in `home` with `envs` (stderr dropped)
/// and connects `handler`, a client of the test's own making, to it.
pub async fn serve_to<H: ClientHandler>(
    home: &Path,
    envs: &[(&str, &str)],
    handler: H,
) -> RunningService<RoleClient, H> {
    let cmd = binary(home, envs).configure(|c| {
        c.args(["serve", "--config", "imagegen.toml"]);
    });
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn imagegen-mcp");
    handler.serve(transport).await.expect("MCP handshake")
}

/// A real PNG of `width`x`height`, drawn by the mock provider.
pub async fn png(width: u32, height: u32) -> Vec<u8> {
    let mut r = GenerateRequest::new("fixture", MOCK_MODEL);
    r.options.size = Some(format!("{width}x{height}"));
    let result = MockProvider::new(MockSettings::default())
        .generate(&r)
        .await
        .expect("mock renders");
    result.images[0].bytes.to_vec()
}

/// Base64 of bytes, and back (the test kit's).
#[allow(unused_imports)]
pub use imagegen_testkit::img::{b64, unb64};

/// Tool arguments from a JSON object literal.
pub fn args(value: serde_json::Value) -> rmcp::model::JsonObject {
    value.as_object().expect("an object").clone()
}

/// Loads `text` as the config file in `dir` (after an `[output] dir`, with `dir` as home and
/// working directory), as the binary would: for tests of what loading accepts and refuses.
pub fn load_config_in(
    dir: &Path,
    text: &str,
) -> Result<imagegen_mcp::config::LoadedConfig, imagegen_mcp::config::ConfigError> {
    let file = dir.join("imagegen.toml");
    std::fs::write(&file, format!("[output]\ndir = \"out\"\n{text}")).unwrap();
    let cli = imagegen_mcp::config::CliOverrides {
        config: Some(file),
        ..Default::default()
    };
    imagegen_mcp::config::LoadedConfig::load_from(&cli, [("HOME", dir.to_str().unwrap())], dir)
}
