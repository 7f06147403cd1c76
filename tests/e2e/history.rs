//! History search through the real binary: `images find` / `images reindex` on the command
//! line, `find_images` over stdio, and whose images a caller sees over HTTP.

use std::path::Path;

use crate::common::*;
use crate::http::{connect, HttpServer};
use rmcp::model::{CallToolRequestParams, CallToolResult, ProtocolVersion};
use serde_json::{json, Value};

async fn run(home: &Path, args: &[&str]) -> std::process::Output {
    binary(home, &[])
        .args(args)
        .output()
        .await
        .expect("run imagegen-mcp")
}

/// The JSON a successful command printed.
fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn names(found: &Value) -> Vec<String> {
    found["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn images_find_finds_a_generated_image_by_a_word_and_reindex_keeps_the_answers() {
    let home = tempfile::tempdir().unwrap();
    for prompt in ["a red fox in the snow", "a blue whale at sea"] {
        let made = run(home.path(), &["generate", prompt, "--size", "256x256"]).await;
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let fox = json_of(&run(home.path(), &["images", "find", "fox", "--json"]).await);
    let found = names(&fox);
    assert_eq!(found.len(), 1, "{fox}");
    assert!(found[0].contains("a-red-fox"), "{fox}");
    assert_eq!(fox["images"][0]["size"], "256x256");
    assert_eq!(
        fox["images"][0]["uri"],
        format!("imagegen://images/{}", found[0])
    );
    let all = json_of(&run(home.path(), &["images", "find", "--json"]).await);
    assert_eq!(names(&all).len(), 2);

    let reindexed = run(home.path(), &["images", "reindex"]).await;
    assert!(reindexed.status.success());
    let said = String::from_utf8(reindexed.stdout).unwrap();
    assert!(said.starts_with("indexed 2 images"), "{said}");
    assert_eq!(
        json_of(&run(home.path(), &["images", "find", "--json"]).await),
        all
    );
    assert_eq!(
        json_of(&run(home.path(), &["images", "find", "fox", "--json"]).await),
        fox
    );

    let table = run(home.path(), &["images", "find", "whale"]).await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.starts_with("CREATED") && table.contains("a-blue-whale"),
        "{table}"
    );
    let bad = run(home.path(), &["images", "find", "--since", "last week"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YYYY-MM-DD"));
}

fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

async fn find(peer: &rmcp::Peer<rmcp::RoleClient>, arguments: Value) -> CallToolResult {
    peer.call_tool(CallToolRequestParams::new("find_images").with_arguments(args(arguments)))
        .await
        .expect("find_images answers")
}

#[tokio::test]
async fn find_images_over_stdio_pages_through_links_with_their_facts() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2025_11_25).await;
    for prompt in [
        "a lighthouse at dusk",
        "two lighthouses at dawn",
        "a teapot",
    ] {
        let made = server
            .client
            .call_tool(
                CallToolRequestParams::new("generate_image").with_arguments(args(
                    json!({"prompt": prompt, "size": "256x256", "delivery": "link"}),
                )),
            )
            .await
            .unwrap();
        assert_eq!(made.is_error, Some(false), "{made:?}");
    }
    let first = find(&server.client, json!({"query": "lighthouse", "limit": 1})).await;
    assert_eq!(first.is_error, Some(false), "{first:?}");
    let page = structured(&first);
    assert_eq!(page["images"].as_array().unwrap().len(), 1);
    let links: Vec<&str> = first
        .content
        .iter()
        .filter_map(|c| c.as_resource_link())
        .map(|link| link.uri.as_str())
        .collect();
    assert_eq!(links, [page["images"][0]["uri"].as_str().unwrap()]);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let second = structured(
        &find(
            &server.client,
            json!({"query": "lighthouse", "limit": 1, "cursor": cursor}),
        )
        .await,
    );
    assert_eq!(second["images"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null(), "{second}");
    assert_ne!(second["images"][0]["name"], page["images"][0]["name"]);

    for (arguments, param) in [
        (json!({"since": "yesterday"}), "since"),
        (json!({"cursor": "c1.not-ours"}), "cursor"),
        (json!({"limit": 1000}), "limit"),
        (json!({"limit": "ten"}), "limit"),
    ] {
        let refused = find(&server.client, arguments.clone()).await;
        assert_eq!(refused.is_error, Some(true), "{arguments}");
        let error = &structured(&refused)["error"];
        assert_eq!(
            (error["kind"].as_str(), error["param"].as_str()),
            (Some("invalid_request"), Some(param)),
            "{arguments}: {error}"
        );
    }
    server.stop().await;
}

/// An image with its sidecar, as the store writes them, made by `caller`.
fn stored(dir: &Path, name: &str, prompt: &str, caller: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let png = imagegen_testkit::img::png(8, 8);
    std::fs::write(dir.join(name), &png).unwrap();
    let sidecar = json!({
        "version": 1, "name": name, "mime": "image/png", "bytes": png.len(),
        "sha256": "00", "width": 8, "height": 8, "created": "2026-11-30T10:00:00Z",
        "caller": caller, "prompt": prompt, "provider": "mock", "model": "mock-image-1",
    });
    std::fs::write(dir.join(format!("{name}.json")), sidecar.to_string()).unwrap();
}

#[tokio::test]
async fn over_http_a_caller_finds_only_their_own_images_unless_the_store_is_shared() {
    let out = tempfile::tempdir().unwrap();
    stored(
        out.path(),
        "20261130-100000-alices-cat-aaaaaaaa.png",
        "alice's cat",
        "alice",
    );
    stored(
        out.path(),
        "20261130-100001-bobs-cat-bbbbbbbb.png",
        "bob's cat",
        "bob",
    );
    for (shared, alice_sees) in [(false, 1), (true, 2)] {
        let config = format!(
            "[output]\ndir = {:?}\n[storage]\nshared = {shared}\n\
             [[server.auth.tokens]]\nname = \"alice\"\ntoken = \"alice-token-0123456789\"\n\
             [[server.auth.tokens]]\nname = \"bob\"\ntoken = \"bob-token-0123456789\"\n",
            out.path()
        );
        let server = HttpServer::start_mock(&config, &[]).await;
        let (alice, _) = connect(
            &server.mcp(),
            "alice-token-0123456789",
            ProtocolVersion::V_2025_11_25,
        )
        .await;
        let found = structured(&find(alice.peer(), json!({"query": "cat"})).await);
        let names = names(&found);
        assert_eq!(names.len(), alice_sees, "shared = {shared}: {found}");
        assert!(names.iter().any(|n| n.contains("alices-cat")), "{found}");
        if !shared {
            assert_eq!(found["images"][0]["caller"], "alice");
        }
        alice.cancel().await.unwrap();
    }
}
