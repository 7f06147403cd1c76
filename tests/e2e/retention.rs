//! Caller-chosen file names and retention through the real binary: a `filename` is used
//! inside the store only and never overwrites; `images prune` and a running server delete the
//! server's own old images and nothing else, on the local store and (when
//! `IMAGEGEN_TEST_S3_ENDPOINT` names an S3-compatible server on loopback) a real bucket.

use std::{path::Path, process::Stdio, time::Duration};

use crate::common::{args, binary, VersionedClient};
use imagegen_testkit::fake::poll_until;
use rmcp::{
    model::{CallToolRequestParams, CallToolResult, ProtocolVersion},
    service::RunningService,
    transport::ConfigureCommandExt as _,
    RoleClient, ServiceExt,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt as _;

async fn stdio(home: &Path, config: &str) -> RunningService<RoleClient, VersionedClient> {
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
    VersionedClient(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .expect("MCP handshake")
}

async fn generate(client: &RunningService<RoleClient, VersionedClient>, arguments: Value) -> Value {
    let result: CallToolResult = client
        .call_tool(CallToolRequestParams::new("generate_image").with_arguments(args(arguments)))
        .await
        .expect("a tool result");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result.structured_content.expect("structured")
}

fn names(output: &Value) -> Vec<String> {
    output["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mock_config(out: &Path) -> String {
    format!(
        "default_provider = \"mock\"\n[output]\ndir = {:?}\n",
        out.to_str().unwrap()
    )
}

#[tokio::test]
async fn a_requested_filename_is_used_inside_the_store_and_never_overwrites() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let client = stdio(home.path(), &mock_config(&out)).await;
    let first = generate(
        &client,
        json!({"prompt": "a cat", "filename": "cat.jpg", "delivery": "link"}),
    )
    .await;
    assert_eq!(names(&first), ["cat.png"], "{first}");
    assert_eq!(first["images"][0]["uri"], "imagegen://images/cat.png");
    let notes = first["notes"].to_string();
    assert!(notes.contains("`.png`"), "the result says why: {first}");
    let before = sha256(&out.join("cat.png"));
    let size = std::fs::metadata(out.join("cat.png")).unwrap().len();

    let second = generate(
        &client,
        json!({"prompt": "another cat", "filename": "cat.png", "delivery": "link"}),
    )
    .await;
    assert_eq!(names(&second), ["cat-2.png"], "{second}");
    assert!(second["notes"].to_string().contains("taken"), "{second}");
    assert_eq!(
        sha256(&out.join("cat.png")),
        before,
        "cat.png was overwritten"
    );
    assert_eq!(std::fs::metadata(out.join("cat.png")).unwrap().len(), size);
    assert_eq!(
        first["images"][0]["sha256"].as_str().unwrap(),
        before,
        "the first file is still the first image"
    );

    let escaped = generate(
        &client,
        json!({"prompt": "out", "filename": "../../escape.png", "delivery": "link"}),
    )
    .await;
    assert_eq!(names(&escaped), ["escape.png"], "{escaped}");
    assert!(out.join("escape.png").is_file());
    assert!(!home.path().join("escape.png").exists());
    assert!(!home.path().parent().unwrap().join("escape.png").exists());
    let path = escaped["images"][0]["path"].as_str().unwrap();
    assert!(
        Path::new(path).starts_with(out.canonicalize().unwrap()),
        "{path}"
    );

    let pair = generate(
        &client,
        json!({"prompt": "two", "filename": "pair", "n": 2, "delivery": "link"}),
    )
    .await;
    let mut pair = names(&pair);
    pair.sort();
    assert_eq!(pair, ["pair-2.png", "pair.png"]);

    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(out.join("cat.png.json")).unwrap()).unwrap();
    assert_eq!(sidecar["filename_requested"], "cat.jpg");
    // A name with nothing usable left falls back to the server's own naming.
    let fallback = generate(
        &client,
        json!({"prompt": "dots", "filename": "...", "delivery": "link"}),
    )
    .await;
    assert!(names(&fallback)[0].contains("-dots-"), "{fallback}");
    let _ = client.cancel().await;
}

/// Rewrites the sidecar of `name` in `out` to say it was made `days` ago.
fn age(out: &Path, name: &str, days: i64) {
    let path = out.join(format!("{name}.json"));
    let mut sidecar: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let created = time::OffsetDateTime::now_utc() - time::Duration::days(days);
    sidecar["created"] = json!(created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&sidecar).unwrap()).unwrap();
}

async fn cli(home: &Path, arguments: &[&str]) -> (bool, String) {
    let output = binary(home, &[])
        .arg("--config")
        .arg(home.join("imagegen.toml"))
        .args(arguments)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn images_prune_lists_then_deletes_only_the_servers_own_old_images() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let client = stdio(home.path(), &mock_config(&out)).await;
    let mut made = Vec::new();
    for prompt in ["oldest", "old", "new"] {
        let output = generate(&client, json!({"prompt": prompt, "delivery": "link"})).await;
        made.extend(names(&output));
    }
    let _ = client.cancel().await;
    age(&out, &made[0], 30);
    age(&out, &made[1], 20);
    // Foreign files under image names, and a lookalike of a server name with a wrong hash.
    let foreign = [
        "holiday.png",
        "20200101-000000-lookalike-deadbeef.png",
        "notes.txt",
    ];
    for name in foreign {
        std::fs::write(out.join(name), b"not ours").unwrap();
    }
    let (ok, dry) = cli(
        home.path(),
        &[
            "images",
            "prune",
            "--dry-run",
            "--max-age-days",
            "7",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{dry}");
    let dry: Value = serde_json::from_str(&dry).unwrap();
    let listed: Vec<&str> = dry["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [made[0].as_str(), made[1].as_str()], "{dry}");
    for name in &made {
        assert!(out.join(name).exists(), "the dry run deleted {name}");
    }
    let (ok, text) = cli(home.path(), &["images", "prune", "--max-age-days", "7"]).await;
    assert!(ok, "{text}");
    for name in &listed {
        assert!(text.contains(&format!("deleted {name}")), "{text}");
        assert!(!out.join(name).exists() && !out.join(format!("{name}.json")).exists());
    }
    assert!(text.contains("deleted 2 images"), "{text}");
    assert!(out.join(&made[2]).exists());
    for name in foreign {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), b"not ours");
    }
    // Without settings or flags, retention is off and deletes nothing.
    let (ok, _) = cli(home.path(), &["images", "prune"]).await;
    assert!(ok && out.join(&made[2]).exists());
}

#[tokio::test]
async fn a_running_server_prunes_at_start_up_and_logs_it() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let client = stdio(home.path(), &mock_config(&out)).await;
    let old = names(&generate(&client, json!({"prompt": "stale", "delivery": "link"})).await);
    let _ = client.cancel().await;
    age(&out, &old[0], 3);
    std::fs::write(out.join("mine.png"), b"a file of the user's").unwrap();
    let config = format!("{}[storage]\nmax_age_days = 1\n", mock_config(&out));
    std::fs::write(home.path().join("imagegen.toml"), config).unwrap();
    let mut server = binary(home.path(), &[("RUST_LOG", "info")])
        .arg("--config")
        .arg(home.path().join("imagegen.toml"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gone = poll_until(Duration::from_secs(8), || {
        (!out.join(&old[0]).exists()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the server did not prune {}", old[0]);
    assert!(out.join("mine.png").exists());
    // The log line follows the deletion: read until it comes rather than race it.
    let mut lines = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let logged = tokio::time::timeout(Duration::from_secs(8), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("retention deleted old images") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let _ = server.start_kill();
    let _ = server.wait().await;
    let line = logged.unwrap_or_else(|| panic!("no retention log line: {log}"));
    assert!(line.contains("count=1"), "{line}");
}

#[tokio::test]
async fn images_prune_works_on_an_s3_bucket() {
    let Ok(endpoint) = std::env::var("IMAGEGEN_TEST_S3_ENDPOINT") else {
        eprintln!("IMAGEGEN_TEST_S3_ENDPOINT is unset: the S3 prune test was skipped");
        return;
    };
    let bucket = format!("imagegen-prune-{}", std::process::id());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the test S3 server answers");
    assert!(created.status().is_success(), "{}", created.status());
    let home = tempfile::tempdir().unwrap();
    let config = format!(
        r#"default_provider = "mock"
[storage]
url = "s3://{bucket}/p"
max_total_mb = 0
options = {{ endpoint = "{endpoint}", region = "us-east-1", allow_http = "true", access_key_id = "testing", secret_access_key = "SENTINEL-s3-prune-secret" }}
"#
    );
    let client = stdio(home.path(), &config).await;
    let made = names(
        &generate(
            &client,
            json!({"prompt": "to the bucket", "filename": "bucketed", "delivery": "link"}),
        )
        .await,
    );
    assert_eq!(made, ["bucketed.png"]);
    let _ = client.cancel().await;
    // Too young to go (a minute's grace), whatever the limit says: the dry run lists nothing.
    let (ok, dry) = cli(home.path(), &["images", "prune", "--dry-run", "--json"]).await;
    assert!(ok, "{dry}");
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["pruned"], json!([]), "{dry}");
    assert_eq!(dry["kept"], 1, "{dry}");
    assert!(!dry.to_string().contains("SENTINEL"), "{dry}");
    // A foreign object beside it is never counted as ours.
    let put = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}/p/images/holiday.png"))
        .body("not ours")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (ok, dry) = cli(home.path(), &["images", "prune", "--json"]).await;
    assert!(ok, "{dry}");
    let report: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(report["not_own"], 1, "{report}");
    // Made two days ago, as its sidecar now says (a caller's name is keyed flat, by name alone).
    // Signed requests: the test server serves objects stored with credentials to no one else.
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(&endpoint)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("SENTINEL-s3-prune-secret")
        .build()
        .unwrap();
    use object_store::ObjectStoreExt as _;
    let sidecar_key = object_store::path::Path::from("p/images/bucketed.png.json");
    let stored = raw.get(&sidecar_key).await.unwrap().bytes().await.unwrap();
    let mut sidecar: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(sidecar["filename_requested"], "bucketed");
    let created = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    sidecar["created"] = json!(created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap());
    raw.put(&sidecar_key, serde_json::to_vec(&sidecar).unwrap().into())
        .await
        .unwrap();
    let (ok, text) = cli(
        home.path(),
        &["images", "prune", "--dry-run", "--max-age-days", "1"],
    )
    .await;
    assert!(ok && text.contains("would delete bucketed.png"), "{text}");
    let exists = |path: &'static str| {
        let key = object_store::path::Path::from(format!("p/images/{path}"));
        let raw = &raw;
        async move { raw.head(&key).await.is_ok() }
    };
    assert!(exists("bucketed.png").await, "the dry run deleted it");
    let (ok, text) = cli(home.path(), &["images", "prune", "--max-age-days", "1"]).await;
    assert!(ok && text.contains("deleted bucketed.png"), "{text}");
    assert!(!exists("bucketed.png").await && !exists("bucketed.png.json").await);
    assert!(exists("holiday.png").await, "a foreign object was deleted");
}
