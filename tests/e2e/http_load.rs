//! A load run over streamable HTTP (loopback only): 64 rmcp clients at once, each a 2026-07-28
//! stateless client of the real binary on the mock provider, each making a bounded number of
//! `generate_image` calls. Every call must succeed and return a saved image.

use std::{collections::BTreeSet, time::Instant};

use rmcp::{
    model::{CallToolRequestParams, ProtocolVersion},
    service::{ClientLifecycleMode, ClientServiceExt as _},
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
};
use serde_json::json;

use crate::common::{args, http_server::HttpServer, VersionedClient};

/// Clients connected at once.
const CLIENTS: usize = 64;
/// Sequential `generate_image` calls per client.
const CALLS_PER_CLIENT: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_stateless_clients_at_once_all_get_their_images() {
    let mut server = HttpServer::start_mock(
        "[providers.mock]\nlatency_ms = 0\n[output]\ndelivery = \"link\"\n",
        &[],
    )
    .await;
    let url = server.mcp();

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let transport = StreamableHttpClientTransport::from_config(
                    StreamableHttpClientTransportConfig::with_uri(url),
                );
                let stateless = ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                };
                let client = VersionedClient(ProtocolVersion::V_2026_07_28)
                    .serve_with_lifecycle(transport, stateless)
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
        server.output()
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
    let health = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.terminate().await;
    assert_eq!(server.exit_code().await, Some(0), "{}", server.output());
}
