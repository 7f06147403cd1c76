//! The `imagegen-mcp` command line, run as a user would.

use crate::common::*;
use serde_json::Value;

async fn run(home: &std::path::Path, envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    binary(home, envs)
        .args(args)
        .output()
        .await
        .expect("run imagegen-mcp")
}

#[tokio::test]
async fn generate_with_no_key_writes_a_real_png_and_prints_its_path() {
    let home = tempfile::tempdir().unwrap();
    let out = run(home.path(), &[], &["generate", "a lighthouse at dusk"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = stdout.trim();
    assert!(
        path.starts_with(
            home.path()
                .join(".local/share/imagegen-mcp/images")
                .to_str()
                .unwrap()
        ),
        "{path}"
    );
    let img = image::open(path).expect("a real image");
    assert_eq!((img.width(), img.height()), (1024, 1024));
    assert!(std::fs::read(path).unwrap().starts_with(b"\x89PNG"));
}

#[tokio::test]
async fn generate_json_prints_the_structured_result_and_exits_1_on_error() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("pics");
    let ok = run(
        home.path(),
        &[],
        &[
            "generate",
            "fox",
            "--json",
            "--n",
            "2",
            "--size",
            "320x200",
            "--format",
            "webp",
            "--out",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok.status.success());
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(v["error"].is_null());
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    assert_eq!(v["images"][0]["mime"], "image/webp");
    assert!(v["images"][0]["path"]
        .as_str()
        .unwrap()
        .starts_with(dir.to_str().unwrap()));

    for args in [
        ["--config", "/nonexistent/imagegen.toml", "generate", "x"],
        ["generate", "x", "--config", "/nonexistent/imagegen.toml"],
    ] {
        let bad = run(home.path(), &[], &args).await;
        assert_eq!(bad.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/imagegen.toml"));
    }

    let refused = run(
        home.path(),
        &[],
        &["generate", "x", "--size", "99999x1", "--json"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_request");
    assert_eq!(v["error"]["param"], "size");
}

#[tokio::test]
async fn config_check_and_show_never_print_the_key() {
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("imagegen.toml");
    std::fs::write(
        &cfg,
        format!("[providers.openai]\nkind = \"openai\"\napi_key = \"{SENTINEL_KEY}\"\n"),
    )
    .unwrap();
    let check = run(home.path(), &[], &["config", "check"]).await;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let show = run(
        home.path(),
        &[("OPENAI_API_KEY", "sk-other-key-000000000000wxyz")],
        &["config", "show"],
    )
    .await;
    assert!(show.status.success());
    let text = String::from_utf8(show.stdout).unwrap() + &String::from_utf8(show.stderr).unwrap();
    assert!(text.contains("sk-…cdef"), "fingerprint shown:\n{text}");
    assert!(
        !text.contains(SENTINEL_KEY) && !text.contains("sk-other-key"),
        "{text}"
    );

    std::fs::write(
        &cfg,
        format!("[providers.openai]\nkind = \"openai\"\napi_key = {SENTINEL_KEY}\n"),
    )
    .unwrap();
    let broken = run(home.path(), &[], &["config", "check"]).await;
    assert_eq!(broken.status.code(), Some(1));
    let text = String::from_utf8_lossy(&broken.stderr);
    assert!(text.contains("imagegen.toml"), "{text}");
    assert!(!text.contains("SENTINEL"), "{text}");
}
