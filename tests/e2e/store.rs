//! The image store through the real binary: whose images a caller sees over HTTP, the
//! provider's bytes kept unchanged with a sidecar that says how they were made, list-changed
//! notifications, `images rm`, and two servers sharing one S3 bucket (when
//! `IMAGEGEN_TEST_S3_ENDPOINT` names an S3-compatible server on loopback; CI starts one).

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::common::{args, binary, http_server::HttpServer, VersionedClient};
use imagegen_testkit::{fake::poll_until, img, openai as testkit_openai, FakeUpstream, Reply};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResult, ClientConfig, ProtocolVersion,
        ReadResourceRequestParams, ResourceContents,
    },
    service::{NotificationContext, RunningService},
    transport::ConfigureCommandExt as _,
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ClientHandler, RoleClient, ServiceExt,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Alice's bearer token; must never appear in any output.
const ALICE: &str = "imagegen-SENTINEL-alice-0c4f5e6a";
const BOB: &str = "imagegen-bob-token-4d1f9a77";
const ADMIN: &str = "imagegen-admin-token-9e2b31d0";

/// rmcp's client on `server` with `token`, in a 2025-11-25 session.
async fn connect(server: &HttpServer, token: &str) -> RunningService<RoleClient, VersionedClient> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(server.mcp()).auth_header(token),
    );
    VersionedClient(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .expect("MCP over HTTP connects")
}

async fn call<C: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, C>,
    tool: &'static str,
    arguments: Value,
) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args(arguments)))
        .await
        .expect("a tool result")
}

/// The URIs of the images a result links to.
fn uris(result: &CallToolResult) -> Vec<String> {
    let structured = result.structured_content.as_ref().expect("structured");
    structured["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["uri"].as_str().unwrap().to_string())
        .collect()
}

async fn listed<C: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, C>,
) -> Vec<String> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let params =
            cursor.map(|c| rmcp::model::PaginatedRequestParams::default().with_cursor(Some(c)));
        let page = client.list_resources(params).await.expect("a listing");
        all.extend(
            page.resources
                .iter()
                .map(|r| r.uri.clone())
                .filter(|u| u.starts_with("imagegen://images/")),
        );
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

async fn read_bytes<C: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, C>,
    uri: &str,
) -> Option<Vec<u8>> {
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .ok()?;
    match read.contents.into_iter().next()? {
        ResourceContents::BlobResourceContents { blob, .. } => Some(img::unb64(&blob)),
        _ => None,
    }
}

async fn read_meta<C: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, C>,
    uri: &str,
) -> Option<Value> {
    let read = client
        .read_resource(ReadResourceRequestParams::new(format!("{uri}/meta")))
        .await
        .ok()?;
    match read.contents.into_iter().next()? {
        ResourceContents::TextResourceContents { text, .. } => serde_json::from_str(&text).ok(),
        _ => None,
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn http_callers_see_read_and_delete_only_their_own_images_with_the_providers_bytes() {
    let png = img::png(96, 64);
    let fake = FakeUpstream::start(vec![
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&png))),
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&png))),
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&png))),
    ])
    .await;
    let config = format!(
        r#"default_provider = "openai"
[providers.openai]
kind = "openai"
base_url = "{}"
api_key = "sk-store-test-0123456789"
[[server.auth.tokens]]
name = "alice"
token = "{ALICE}"
[[server.auth.tokens]]
name = "bob"
token = "{BOB}"
[[server.auth.tokens]]
name = "root"
token = "{ADMIN}"
admin = true
"#,
        fake.base()
    );
    let server = HttpServer::start(&config, &[], &[]).await;
    let (alice, bob, admin) = (
        connect(&server, ALICE).await,
        connect(&server, BOB).await,
        connect(&server, ADMIN).await,
    );
    let made = call(
        &alice,
        "generate_image",
        json!({"prompt": "a red fox", "size": "1024x1024", "delivery": "link"}),
    )
    .await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let alices = uris(&made)[0].clone();
    let made = call(
        &bob,
        "generate_image",
        json!({"prompt": "a blue whale", "delivery": "link"}),
    )
    .await;
    let bobs = uris(&made)[0].clone();

    // The stored bytes are exactly what the upstream sent.
    let stored = read_bytes(&alice, &alices)
        .await
        .expect("alice reads her image");
    assert_eq!(hex_sha256(&stored), hex_sha256(&png));
    let meta = read_meta(&alice, &alices)
        .await
        .expect("alice reads its sidecar");
    assert_eq!(meta["sha256"], hex_sha256(&png));
    assert_eq!(meta["caller"], "alice");
    assert_eq!(meta["tool"], "generate_image");
    assert_eq!(meta["prompt"], "a red fox");
    assert_eq!(meta["provider"], "openai");
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(96), Some(64))
    );
    assert_eq!(meta["params"]["size"], "1024x1024", "{meta}");
    assert!(meta["model"].as_str().is_some_and(|m| !m.is_empty()));

    assert_eq!(listed(&alice).await, vec![alices.clone()]);
    assert_eq!(listed(&bob).await, vec![bobs.clone()]);
    let everything = listed(&admin).await;
    assert!(
        everything.contains(&alices) && everything.contains(&bobs),
        "{everything:?}"
    );
    assert!(
        read_bytes(&bob, &alices).await.is_none(),
        "bob cannot read alice's image"
    );
    assert!(read_meta(&bob, &alices).await.is_none());

    // Nor edit it: not by its URI, nor by its path in the shared output directory.
    let dir = server.home.path().join(".local/share/imagegen-mcp/images");
    let alices_path = dir.join(alices.trim_start_matches("imagegen://images/"));
    for input in [json!(alices), json!(alices_path.display().to_string())] {
        let refused = call(
            &bob,
            "edit_image",
            json!({"prompt": "mine now", "images": [input], "delivery": "link"}),
        )
        .await;
        assert_eq!(refused.is_error, Some(true), "{refused:?}");
        let kind = &structured(&refused)["error"]["kind"];
        assert!(kind == "not_found" || kind == "permission", "{refused:?}");
    }
    let own = call(
        &alice,
        "edit_image",
        json!({"prompt": "at night", "images": [alices], "delivery": "link"}),
    )
    .await;
    assert_ne!(
        own.is_error,
        Some(true),
        "alice edits her own image: {own:?}"
    );
    let edit_of = uris(&own)[0].clone();
    let refused = call(&bob, "delete_image", json!({"image": alices})).await;
    assert_eq!(refused.is_error, Some(true));
    assert!(read_bytes(&alice, &alices).await.is_some(), "still there");
    let deleted = call(&alice, "delete_image", json!({"image": alices})).await;
    assert_ne!(deleted.is_error, Some(true), "{deleted:?}");
    let left = listed(&admin).await;
    assert!(
        !left.contains(&alices) && left.contains(&bobs) && left.contains(&edit_of),
        "{left:?}"
    );
    let name = alices.trim_start_matches("imagegen://images/");
    assert!(!dir.join(name).exists() && !dir.join(format!("{name}.json")).exists());
    assert!(dir
        .join(format!(
            "{}.json",
            bobs.trim_start_matches("imagegen://images/")
        ))
        .exists());
    assert!(!server.output().contains("SENTINEL"));
}

/// A 2025-11-25 client that counts `notifications/resources/list_changed`.
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl ClientHandler for Counting {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `imagegen-mcp serve` over stdio with `config`, a client of `handler`'s kind attached.
async fn stdio<C: ClientHandler>(
    home: &std::path::Path,
    config: &str,
    handler: C,
) -> RunningService<RoleClient, C> {
    let file = home.join("imagegen.toml");
    std::fs::write(&file, config).unwrap();
    let cmd = binary(home, &[]).configure(|c| {
        c.arg("--config").arg(&file).arg("serve");
    });
    let transport = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn imagegen-mcp")
        .0;
    handler.serve(transport).await.expect("MCP handshake")
}

#[tokio::test]
async fn storing_an_image_tells_the_session_the_listing_changed() {
    let home = tempfile::tempdir().unwrap();
    let counter = Counting::default();
    let client = stdio(
        home.path(),
        "default_provider = \"mock\"\n",
        counter.clone(),
    )
    .await;
    let made = call(
        &client,
        "generate_image",
        json!({"prompt": "a note", "delivery": "link"}),
    )
    .await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let heard = poll_until(Duration::from_secs(5), || {
        (counter.0.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert!(heard.is_some(), "no list_changed notification arrived");
    let _ = client.cancel().await;
}

#[tokio::test]
async fn images_rm_deletes_the_image_and_its_sidecar_and_nothing_else() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let client = stdio(
        home.path(),
        &format!(
            "default_provider = \"mock\"\n[output]\ndir = {:?}\n",
            out.to_str().unwrap()
        ),
        VersionedClient(ProtocolVersion::V_2025_11_25),
    )
    .await;
    let made = call(
        &client,
        "generate_image",
        json!({"prompt": "to go", "delivery": "link"}),
    )
    .await;
    let uri = uris(&made)[0].clone();
    let _ = client.cancel().await;
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    let name = uri.trim_start_matches("imagegen://images/");
    let status = binary(home.path(), &[])
        .arg("--config")
        .arg(home.path().join("imagegen.toml"))
        .args(["images", "rm", &uri])
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert!(!out.join(name).exists() && !out.join(format!("{name}.json")).exists());
    assert!(out.join("notes.txt").exists());
    let again = binary(home.path(), &[])
        .arg("--config")
        .arg(home.path().join("imagegen.toml"))
        .args(["images", "rm", name])
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!again.success(), "a second rm finds nothing");
}

#[tokio::test]
async fn two_servers_sharing_a_bucket_see_each_others_images() {
    let Ok(endpoint) = std::env::var("IMAGEGEN_TEST_S3_ENDPOINT") else {
        eprintln!("IMAGEGEN_TEST_S3_ENDPOINT is unset: the shared-bucket test was skipped");
        return;
    };
    let bucket = format!("imagegen-e2e-{}", std::process::id());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the test S3 server answers");
    assert!(created.status().is_success(), "{}", created.status());
    let config = format!(
        r#"default_provider = "mock"
[storage]
url = "s3://{bucket}/shared"
options = {{ endpoint = "{endpoint}", region = "us-east-1", allow_http = "true", access_key_id = "testing", secret_access_key = "SENTINEL-s3-secret" }}
"#
    );
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = stdio(
        home_a.path(),
        &config,
        VersionedClient(ProtocolVersion::V_2025_11_25),
    )
    .await;
    let b = stdio(
        home_b.path(),
        &config,
        VersionedClient(ProtocolVersion::V_2025_11_25),
    )
    .await;
    let made = call(
        &a,
        "generate_image",
        json!({"prompt": "from a", "delivery": "link"}),
    )
    .await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let from_a = uris(&made)[0].clone();
    assert!(made.structured_content.as_ref().unwrap()["images"][0]
        .get("path")
        .is_none());
    let made = call(
        &b,
        "generate_image",
        json!({"prompt": "from b", "delivery": "link"}),
    )
    .await;
    let from_b = uris(&made)[0].clone();
    for client in [&a, &b] {
        let seen = listed(client).await;
        assert!(seen.contains(&from_a) && seen.contains(&from_b), "{seen:?}");
    }
    // History search on b finds what a made: b's index catches up from the bucket's listing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = call(&b, "find_images", json!({"query": "from a"})).await;
        assert_ne!(found.is_error, Some(true), "{found:?}");
        let names: Vec<String> = found.structured_content.as_ref().unwrap()["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["uri"].as_str().unwrap().to_string())
            .collect();
        if names == [from_a.clone()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never found a's image: {names:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The command line searches the bucket too: a rebuilt index on a's machine has b's image.
    let cli = |args: &'static [&'static str]| {
        let home = home_a.path().to_path_buf();
        async move {
            let output = binary(&home, &[])
                .arg("--config")
                .arg(home.join("imagegen.toml"))
                .args(args)
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{args:?}: {output:?}");
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let reindexed = cli(&["images", "reindex", "--json"]).await;
    assert!(reindexed.contains("\"from_sidecars\": 2"), "{reindexed}");
    let found: Value =
        serde_json::from_str(&cli(&["images", "find", "from", "b", "--json"]).await).unwrap();
    assert_eq!(found["images"][0]["uri"], json!(from_b), "{found}");
    let by_a = read_bytes(&a, &from_b).await.expect("a reads b's image");
    let by_b = read_bytes(&b, &from_b)
        .await
        .expect("b reads its own image");
    assert_eq!(by_a, by_b);
    let meta = read_meta(&b, &from_a).await.expect("b reads a's sidecar");
    assert_eq!(meta["prompt"], "from a");
    assert_eq!(meta["sha256"], hex_sha256(&by_a_or(&a, &from_a).await));
    // An image another replica stored is an edit input by its URI, and its sidecar says so.
    let edited = call(
        &b,
        "edit_image",
        json!({"prompt": "the same, at night", "images": [from_a], "delivery": "link"}),
    )
    .await;
    assert_ne!(edited.is_error, Some(true), "{edited:?}");
    let meta = read_meta(&a, &uris(&edited)[0])
        .await
        .expect("a reads the edit's sidecar");
    assert_eq!(meta["inputs"], json!([from_a]));
    assert_eq!(meta["tool"], "edit_image");
    // A request b makes after a made it is a hit on a's images: the entry is in the bucket.
    let ask = json!({"prompt": "a shared fox", "cache": true, "delivery": "link"});
    let by_a = call(&a, "generate_image", ask.clone()).await;
    assert_ne!(by_a.is_error, Some(true), "{by_a:?}");
    let by_b = call(&b, "generate_image", ask).await;
    assert_eq!(structured(&by_b)["cached"], true, "{by_b:?}");
    assert_eq!(uris(&by_b), uris(&by_a));
    // Nothing landed on either machine's disk.
    for home in [&home_a, &home_b] {
        let dir = home.path().join(".local/share/imagegen-mcp/images");
        let files = std::fs::read_dir(dir).map_or(0, |d| d.count());
        assert_eq!(files, 0, "no image on the local disk");
    }
    let _ = a.cancel().await;
    let _ = b.cancel().await;
}

async fn by_a_or<C: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, C>,
    uri: &str,
) -> Vec<u8> {
    read_bytes(client, uri).await.expect("readable")
}

/// The structured content of a tool result.
fn structured(result: &CallToolResult) -> &Value {
    result.structured_content.as_ref().expect("structured")
}

#[tokio::test]
async fn an_identical_request_is_served_from_the_cache_without_calling_the_provider() {
    let (one, two, three) = (img::png(40, 40), img::png(48, 32), img::png(32, 48));
    let fake = FakeUpstream::start(vec![
        Reply::json(&testkit_openai::b64_body(&[one.clone(), two.clone()])),
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&three))),
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&three))),
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&three))),
    ])
    .await;
    let home = tempfile::tempdir().unwrap();
    let config = format!(
        r#"default_provider = "openai"
[providers.openai]
kind = "openai"
base_url = "{}"
api_key = "sk-cache-test-0123456789"
[cache]
enabled = true
"#,
        fake.base()
    );
    let client = stdio(
        home.path(),
        &config,
        VersionedClient(ProtocolVersion::V_2025_11_25),
    )
    .await;
    let ask = json!({"prompt": "two foxes", "n": 2, "size": "1024x1024", "delivery": "link"});
    let first = call(&client, "generate_image", ask.clone()).await;
    assert_ne!(first.is_error, Some(true), "{first:?}");
    assert_eq!(structured(&first).get("cached"), None);
    assert_eq!(fake.count(), 1);

    let again = call(&client, "generate_image", ask.clone()).await;
    assert_ne!(again.is_error, Some(true), "{again:?}");
    assert_eq!(fake.count(), 1, "a hit never reaches the provider");
    let hit = structured(&again);
    assert_eq!(hit["cached"], true, "{hit}");
    let original = &structured(&first)["request_id"];
    assert!(original.is_string(), "{first:?}");
    assert_eq!(
        &hit["request_id"], original,
        "the original call's request id"
    );
    assert!(hit["original_created"]
        .as_str()
        .is_some_and(|c| c.starts_with("20")));
    assert_eq!(
        uris(&again),
        uris(&first),
        "the same stored images, in order"
    );
    assert_eq!(hit["images"][1]["sha256"], hex_sha256(&two));
    assert!(hit.get("usage").is_none(), "a hit costs nothing: {hit}");
    assert_eq!(
        read_bytes(&client, &uris(&again)[0]).await.unwrap(),
        one,
        "the provider's bytes"
    );

    // `cache: false` asks the provider; so does any change to what would be sent.
    let mut fresh = ask.clone();
    fresh["cache"] = json!(false);
    assert_eq!(
        structured(&call(&client, "generate_image", fresh).await).get("cached"),
        None
    );
    assert_eq!(fake.count(), 2);
    let mut other = ask.clone();
    other["size"] = json!("1024x1536");
    assert_eq!(
        structured(&call(&client, "generate_image", other).await).get("cached"),
        None
    );
    assert_eq!(fake.count(), 3);

    // A cached image that was deleted is a miss, never a broken result.
    let deleted = call(&client, "delete_image", json!({"image": uris(&first)[0]})).await;
    assert_ne!(deleted.is_error, Some(true), "{deleted:?}");
    let after = call(&client, "generate_image", ask).await;
    assert_ne!(after.is_error, Some(true), "{after:?}");
    assert_eq!(structured(&after).get("cached"), None);
    assert_eq!(fake.count(), 4);
    let _ = client.cancel().await;
}

#[tokio::test]
async fn the_cache_never_answers_one_caller_with_anothers_image() {
    let png = img::png(40, 40);
    let fake = FakeUpstream::start(vec![
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&png))),
        Reply::json(&testkit_openai::b64_body(std::slice::from_ref(&png))),
    ])
    .await;
    let config = format!(
        r#"default_provider = "openai"
[providers.openai]
kind = "openai"
base_url = "{}"
api_key = "sk-cache-test-0123456789"
[[server.auth.tokens]]
name = "alice"
token = "{ALICE}"
[[server.auth.tokens]]
name = "bob"
token = "{BOB}"
"#,
        fake.base()
    );
    let server = HttpServer::start(&config, &[], &[]).await;
    let (alice, bob) = (connect(&server, ALICE).await, connect(&server, BOB).await);
    let ask = json!({"prompt": "a secret plan", "cache": true, "delivery": "link"});
    let made = call(&alice, "generate_image", ask.clone()).await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let bobs = call(&bob, "generate_image", ask.clone()).await;
    assert_eq!(structured(&bobs).get("cached"), None, "bob's own call");
    assert_ne!(uris(&bobs), uris(&made));
    assert_eq!(fake.count(), 2);
    let alices_again = call(&alice, "generate_image", ask).await;
    assert_eq!(structured(&alices_again)["cached"], true);
    assert_eq!(uris(&alices_again), uris(&made));
    assert_eq!(fake.count(), 2);
    let (status, metrics) = server.scrape(ALICE).await;
    assert_eq!(status, 200);
    let lookups = |outcome: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("imagegen_cache_lookups_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(lookups("hit").as_deref(), Some("1"), "{metrics}");
    assert_eq!(lookups("miss").as_deref(), Some("2"), "{metrics}");
}

#[tokio::test]
async fn a_stateless_client_listening_hears_that_the_listing_changed() {
    use crate::common::http_server;
    use rmcp::model::{ServerNotification, SubscriptionFilter};
    let server = HttpServer::start_mock(
        &format!("[[server.auth.tokens]]\nname = \"alice\"\ntoken = \"{ALICE}\"\n"),
        &[],
    )
    .await;
    let listener = http_server::connect(&server.mcp(), ALICE, &[]).await;
    let mut subscription = listener
        .peer()
        .listen(
            SubscriptionFilter::builder()
                .resources_list_changed()
                .build(),
        )
        .await
        .expect("subscriptions/listen is acknowledged");
    assert_eq!(
        subscription.acknowledged(),
        &SubscriptionFilter::builder()
            .resources_list_changed()
            .build()
    );
    let maker = http_server::connect(&server.mcp(), ALICE, &[]).await;
    let made = http_server::call(
        &maker,
        "generate_image",
        json!({"prompt": "a heard fox", "delivery": "link"}),
    )
    .await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let heard = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a notification within 5 s")
        .expect("the stream is open");
    assert!(
        matches!(
            heard,
            Some(ServerNotification::ResourceListChangedNotification(_))
        ),
        "{heard:?}"
    );
}

#[tokio::test]
async fn ten_large_images_are_stored_with_sidecars_and_their_previews_fit_the_budget() {
    let photo = img::photo_like_png(1536, 1024, 3);
    assert!(photo.len() > 1_400_000, "a realistic size: {}", photo.len());
    let fake = FakeUpstream::start(vec![Reply::json(&testkit_openai::b64_body(&vec![
        photo
            .clone(
            );
        10
    ]))])
    .await;
    let home = tempfile::tempdir().unwrap();
    let config = format!(
        "default_provider = \"openai\"\n[providers.openai]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"sk-budget-test-0123456789\"\n",
        fake.base()
    );
    let client = stdio(
        home.path(),
        &config,
        VersionedClient(ProtocolVersion::V_2025_11_25),
    )
    .await;
    let made = call(
        &client,
        "generate_image",
        json!({"prompt": "ten valleys", "n": 10, "size": "1536x1024"}),
    )
    .await;
    assert_ne!(made.is_error, Some(true), "{made:?}");
    let inline: usize = made
        .content
        .iter()
        .filter_map(|c| c.as_image())
        .map(|i| i.data.len())
        .sum();
    assert!(inline > 0, "previews are inline");
    assert!(inline <= 80_000, "{inline} base64 bytes inline");
    let images = uris(&made);
    assert_eq!(images.len(), 10);
    let mut names: Vec<&String> = images.iter().collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 10, "ten names");
    for uri in &images {
        let meta = read_meta(&client, uri).await.expect("a sidecar");
        assert_eq!(meta["sha256"], hex_sha256(&photo));
        assert_eq!(
            (meta["width"].as_u64(), meta["height"].as_u64()),
            (Some(1536), Some(1024))
        );
    }
    assert_eq!(read_bytes(&client, &images[9]).await.unwrap(), photo);
    let _ = client.cancel().await;
}
