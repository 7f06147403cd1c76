//! A load run over streamable HTTP (loopback only): 64 rmcp clients at once, each a 2026-07-28
//! stateless client of the real binary on the mock provider, each making a bounded number of
//! `generate_image` calls. Every call must succeed and return a saved image.

use std::{
    collections::BTreeSet,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rmcp::{
    model::{CallToolRequestParams, ProtocolVersion},
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ServiceExt,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{args, binary, VersionedClient};

/// Clients connected at once.
const CLIENTS: usize = 64;
/// Sequential `generate_image` calls per client.
const CALLS_PER_CLIENT: usize = 3;

/// Starts `serve --http 127.0.0.1:0` with `config`; returns the child, its base URL and the
/// lines it writes to stderr (collected as they come).
async fn start(
    home: &std::path::Path,
    config: &str,
) -> (tokio::process::Child, String, Arc<Mutex<String>>) {
    let file = home.join("imagegen.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = binary(home, &[("RUST_LOG", "info")])
        .arg("--config")
        .arg(&file)
        .args(["serve", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imagegen-mcp");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stderr, lines) = (child.stderr.take().unwrap(), log.clone());
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Some(at) = line.find("url=http://") {
                let url = line[at + 4..].split_whitespace().next().unwrap_or("");
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.trim_end_matches("/mcp").to_string());
                }
            }
            let mut all = lines.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    let base = match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(base)) => base,
        _ => panic!(
            "the server did not report its URL:\n{}",
            log.lock().unwrap()
        ),
    };
    (child, base, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_stateless_clients_at_once_all_get_their_images() {
    let home = tempfile::tempdir().unwrap();
    let images = home.path().join("images");
    let (mut child, base, log) = start(
        home.path(),
        &format!(
            "default_provider = \"mock\"\n[providers.mock]\nlatency_ms = 0\n\
             [output]\ndir = {:?}\ndelivery = \"link\"\n[reload]\npoll_s = 0\n",
            images.to_str().unwrap()
        ),
    )
    .await;
    let url = format!("{base}/mcp");

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let transport = StreamableHttpClientTransport::from_config(
                    StreamableHttpClientTransportConfig::with_uri(url),
                );
                let client = VersionedClient(ProtocolVersion::V_2026_07_28)
                    .serve(transport)
                    .await
                    .map_err(|e| format!("client {c} connects: {e}"))?;
                let mut paths = Vec::new();
                for i in 0..CALLS_PER_CLIENT {
                    let params = CallToolRequestParams::new("generate_image").with_arguments(args(
                        json!({"prompt": format!("load {c} {i}"), "size": "64x64"}),
                    ));
                    let result = client
                        .call_tool(params)
                        .await
                        .map_err(|e| format!("client {c} call {i}: {e}"))?;
                    if result.is_error == Some(true) {
                        return Err(format!("client {c} call {i} failed: {result:?}"));
                    }
                    let path = result
                        .structured_content
                        .as_ref()
                        .and_then(|s| s["images"][0]["path"].as_str())
                        .ok_or_else(|| format!("client {c} call {i}: no image in {result:?}"))?
                        .to_string();
                    paths.push(path);
                }
                let _ = client.cancel().await;
                Ok::<_, String>(paths)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut paths = BTreeSet::new();
    for client in clients {
        match client.await.expect("client task") {
            Ok(saved) => paths.extend(saved),
            Err(e) => errors.push(e),
        }
    }
    let took = started.elapsed();
    assert!(
        errors.is_empty(),
        "{} of {CLIENTS} clients failed: {errors:#?}\n{}",
        errors.len(),
        log.lock().unwrap()
    );
    // Every call saved an image of its own, and each is a real PNG.
    assert_eq!(paths.len(), CLIENTS * CALLS_PER_CLIENT);
    for path in &paths {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{path}: not a PNG");
    }
    eprintln!(
        "{} calls from {CLIENTS} clients in {:.2} s",
        paths.len(),
        took.as_secs_f64()
    );

    // The server is still healthy after the run, and stops cleanly.
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let pid = child.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the server exits")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{}", log.lock().unwrap());
}
