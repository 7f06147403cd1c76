//! Hostile local inputs through the real binary: settings out of range, files that are not
//! files (FIFOs, `/dev/zero`) as key files and input images, credentials in `base_url`, log
//! writes next to the config file, forged log lines, and an output directory that cannot be
//! written. Each must end in a clear error, promptly, with no secret and no file bytes shown.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use crate::common::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProtocolVersion, ReadResourceRequestParams,
    ResourceContents,
};
use serde_json::{json, Value};

const KEY_A: &str = "sk-SENTINEL-local-0123456789abcdef";
const KEY_B: &str = "sk-SENTINEL-local-fedcba9876543210";
/// Each test must finish its command within this; a hang fails the test instead of stalling it.
const PROMPTLY: Duration = Duration::from_secs(15);

/// Writes `toml` as `home/imagegen.toml` and returns its path.
fn write_config(home: &Path, toml: &str) -> PathBuf {
    let file = home.join("imagegen.toml");
    std::fs::write(&file, toml).unwrap();
    file
}

/// Runs `imagegen-mcp --config FILE ARGS...` with stdin open and waits at most [`PROMPTLY`].
async fn run(home: &Path, file: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = binary(home, envs);
    cmd.arg("--config")
        .arg(file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn imagegen-mcp");
    tokio::time::timeout(PROMPTLY, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{}` did not finish within {PROMPTLY:?}", args.join(" ")))
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains("SENTINEL"), "{what} shows a secret: {text}");
}

/// An OpenAI provider on a closed port with `keys` (TOML lines), images under `home/out`.
fn openai_config(home: &Path, keys: &str) -> String {
    format!(
        "default_provider = \"openai\"\n[catalog]\ncheck_upstream = false\n\
         [output]\ndir = \"{}\"\n\n[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n{keys}\n",
        home.join("out").display()
    )
}

async fn status(server: &Server) -> Value {
    let read = server
        .client
        .read_resource(ReadResourceRequestParams::new("imagegen://status"))
        .await
        .expect("status readable");
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("the status is text");
    };
    assert_no_secret("the status", text);
    serde_json::from_str(text).expect("the status is JSON")
}

/// Reads the status until `done` holds, for at most `limit`.
async fn wait_status(server: &Server, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = status(server).await;
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "status not as expected within {limit:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fingerprints(status: &Value) -> Vec<String> {
    status["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "openai")
        .flat_map(|p| p["keys"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k["fingerprint"].as_str().map(String::from))
        .collect()
}

async fn call(server: &Server, tool: &'static str, arguments: Value) -> CallToolResult {
    tokio::time::timeout(
        PROMPTLY,
        server
            .client
            .call_tool(CallToolRequestParams::new(tool).with_arguments(args(arguments))),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} not answered within {PROMPTLY:?}"))
    .expect("tool call answered")
}

fn result_text(result: &CallToolResult) -> String {
    serde_json::to_string(result).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Item 3: settings out of range.

#[tokio::test]
async fn durations_and_sizes_out_of_range_fail_config_check_naming_the_key() {
    let home = tempfile::tempdir().unwrap();
    let cases = [
        ("providers.openai", "deadline_s = 9223372036854775807"),
        ("providers.openai", "timeout_s = 86401"),
        ("providers.openai", "connect_timeout_s = 0"),
        ("providers.openai", "retry_max_ms = 9223372036854775807"),
        (
            "providers.openai",
            "retry_after_cap_s = 9223372036854775807",
        ),
        ("providers.openai", "key_recheck_s = 9223372036854775807"),
        ("providers.openai", "max_response_mb = 0"),
        ("providers.mock", "latency_ms = 9223372036854775807"),
        ("reload", "poll_s = 9223372036854775807"),
        ("reload", "debounce_ms = 9223372036854775807"),
        ("input", "max_image_mb = 9223372036854775807"),
        ("input", "max_mask_mb = 0"),
        ("catalog", "check_interval_h = 9223372036854775807"),
        ("output", "preview_budget_bytes = 9223372036854775807"),
        ("limits", "max_in_flight = 9223372036854775807"),
        ("batch", "max_items = 1000000"),
    ];
    for (table, line) in cases {
        let key = format!("{table}.{}", line.split(' ').next().unwrap());
        // Under the provider's own table, or a table of its own.
        let (inside, after) = match table {
            "providers.openai" => (line, String::new()),
            _ => ("", format!("[{table}]\n{line}\n")),
        };
        let file = write_config(
            home.path(),
            &format!(
                "[providers.openai]\napi_key = \"{KEY_A}\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                 {inside}\n{after}"
            ),
        );
        let out = run(home.path(), &file, &["config", "check"], &[]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{line}: {stderr}");
        assert!(stderr.contains("must be"), "{line}: {stderr}");
        assert_no_secret("config check", &stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// Item 9: key files that are not files.

#[tokio::test]
async fn a_fifo_or_dev_zero_as_api_key_file_fails_check_and_serve_promptly() {
    let home = tempfile::tempdir().unwrap();
    let fifo = home.path().join("key.fifo");
    mkfifo(&fifo);
    for key_file in [fifo.as_path(), Path::new("/dev/zero")] {
        let file = write_config(
            home.path(),
            &openai_config(
                home.path(),
                &format!("api_key_file = \"{}\"", key_file.display()),
            ),
        );
        for args in [&["config", "check"][..], &["serve"][..]] {
            let out = run(home.path(), &file, args, &[]).await;
            let stderr = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{args:?} {key_file:?}: {stderr}"
            );
            assert!(
                stderr.contains("providers.openai.api_key_file")
                    && stderr.contains("not a regular file"),
                "{args:?} {key_file:?}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn a_key_file_replaced_by_a_fifo_fails_the_reload_and_a_good_key_applies_later() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("out")).unwrap();
    let key = home.path().join("secrets/key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, KEY_A).unwrap();
    let file = write_config(
        home.path(),
        &openai_config(
            home.path(),
            &format!("api_key_file = \"{}\"", key.display()),
        ),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", file.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    assert_eq!(fingerprints(&status(&server).await), ["sk-…cdef"]);

    std::fs::remove_file(&key).unwrap();
    mkfifo(&key);
    let failed = wait_status(&server, PROMPTLY, |s| {
        s["last_reload_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a regular file"))
    })
    .await;
    assert_eq!(fingerprints(&failed), ["sk-…cdef"], "the running key stays");

    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, KEY_B).unwrap();
    let fixed = wait_status(&server, PROMPTLY, |s| {
        s["last_reload_error"].is_null() && fingerprints(s) == ["sk-…3210"]
    })
    .await;
    assert!(fixed["reloads"].as_u64().unwrap() >= 1, "{fixed:#}");
    assert_no_secret("the server's stderr", &server.stop().await);
}

// ---------------------------------------------------------------------------------------------
// Item 13: credentials in base_url.

#[tokio::test]
async fn config_show_and_check_never_print_base_url_credentials() {
    let home = tempfile::tempdir().unwrap();
    let file = write_config(
        home.path(),
        &format!(
            "default_provider = \"openai\"\n[providers.openai]\napi_key = \"{KEY_A}\"\n\
             base_url = \"http://user:SENTINELPASS@gateway.example/v1\"\n"
        ),
    );
    for args in [&["config", "show"][..], &["config", "check"][..]] {
        let out = run(home.path(), &file, args, &[]).await;
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {all}");
        assert_no_secret(&format!("{args:?}"), &all);
        assert!(!all.contains("user:"), "{args:?}: {all}");
        if args[1] == "show" {
            assert!(
                all.contains("base_url = \"http://***@gateway.example/v1\""),
                "{all}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 15: an output directory that cannot be written.

#[tokio::test]
async fn an_unwritable_output_dir_fails_start_up_with_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    // A regular file where the directory should be: unwritable as a directory even for root.
    let blocker = home.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let mut dirs = vec![blocker.clone(), blocker.join("images")];
    // SAFETY: geteuid has no preconditions.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let root = unsafe { libc::geteuid() } == 0;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let root = true;
    if !root {
        use std::os::unix::fs::PermissionsExt as _;
        let locked = home.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        dirs.push(locked.clone());
        dirs.push(locked.join("images"));
    }
    for dir in &dirs {
        let file = write_config(
            home.path(),
            &format!(
                "default_provider = \"mock\"\n[catalog]\ncheck_upstream = false\n\
                 [output]\ndir = \"{}\"\n",
                dir.display()
            ),
        );
        for args in [&["serve"][..], &["config", "check"][..]] {
            let out = run(home.path(), &file, args, &[]).await;
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {dir:?}: {stderr}");
            assert!(
                stderr.contains("`output.dir`") && stderr.contains("cannot be written"),
                "{args:?} {dir:?}: {stderr}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 4: input paths that are not regular files.

#[tokio::test]
async fn a_fifo_or_dev_zero_as_an_input_image_is_refused_promptly() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    mkfifo(&out.join("pipe.png"));
    std::os::unix::fs::symlink("/dev/zero", out.join("zero.png")).unwrap();
    let file = write_config(
        home.path(),
        &format!(
            "default_provider = \"mock\"\n[catalog]\ncheck_upstream = false\n\
             [output]\ndir = \"{}\"\n[input]\nallowed_dirs = [\"/dev\"]\n",
            out.display()
        ),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", file.to_str().unwrap()],
        &[],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    for spec in ["pipe.png", "zero.png", "/dev/zero"] {
        let started = Instant::now();
        let result = call(
            &server,
            "edit_image",
            json!({"prompt": "x", "images": [spec], "delivery": "link"}),
        )
        .await;
        let shown = result_text(&result);
        assert_eq!(result.is_error, Some(true), "{spec}: {shown}");
        assert!(shown.contains("not a regular file"), "{spec}: {shown}");
        assert!(started.elapsed() < Duration::from_secs(5), "{spec}");
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Item 6: the watcher reacts to the files it reads, not to everything next to them.

#[tokio::test]
async fn writes_next_to_the_config_file_cause_no_configuration_checks() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("out")).unwrap();
    let file = write_config(
        home.path(),
        &openai_config(home.path(), &format!("api_key = \"{KEY_A}\"")),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", file.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    // Let start-up settle, then a log file keeps being written beside the config file.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = home.path().join("server.log");
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(2) {
        std::fs::write(&log, format!("line {n}\n")).unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The config file itself still reloads.
    std::fs::write(
        &file,
        openai_config(home.path(), &format!("api_key = \"{KEY_B}\"")),
    )
    .unwrap();
    wait_status(&server, PROMPTLY, |s| fingerprints(s) == ["sk-…3210"]).await;
    let stderr = server.stop().await;
    let checks = stderr
        .lines()
        .filter(|l| l.contains("checking the configuration"))
        .count();
    assert!(
        checks <= 1,
        "{checks} configuration checks for {n} writes beside the file:\n{stderr}"
    );
    assert_no_secret("the server's stderr", &stderr);
}

// ---------------------------------------------------------------------------------------------
// Item 14: caller-chosen strings in logs.

#[tokio::test]
async fn a_provider_name_with_a_newline_is_logged_escaped() {
    let home = tempfile::tempdir().unwrap();
    let file = write_config(
        home.path(),
        &format!(
            "default_provider = \"mock\"\n[catalog]\ncheck_upstream = false\n\
             [output]\ndir = \"{}\"\n",
            home.path().join("out").display()
        ),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", file.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let forged = "nope\n2026-01-01T00:00:00Z ERROR FORGED the server was compromised";
    let result = call(
        &server,
        "generate_image",
        json!({"prompt": "x", "provider": forged}),
    )
    .await;
    assert_eq!(result.is_error, Some(true), "{}", result_text(&result));
    let stderr = server.stop().await;
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("ERROR FORGED") && !l.contains("failed") && !l.contains("nope")),
        "a caller's string started a log line of its own:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 5: resources/read serves the files the store wrote, and nothing a link or a pipe points at.

#[tokio::test]
async fn resources_read_refuses_links_pipes_and_oversized_files_in_the_output_dir() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", out.join("environ.png")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.join("passwd.png")).unwrap();
    mkfifo(&out.join("pipe.png"));
    std::fs::write(out.join("huge.png"), vec![0u8; 1_500_000]).unwrap();
    let file = write_config(
        home.path(),
        &format!(
            "default_provider = \"mock\"\n[catalog]\ncheck_upstream = false\n\
             [output]\ndir = \"{}\"\nmax_read_mb = 1\n",
            out.display()
        ),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", file.to_str().unwrap()],
        &[("OPENAI_API_KEY", KEY_A)],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    for (name, why) in [
        ("environ.png", "symbolic link"),
        ("passwd.png", "symbolic link"),
        ("pipe.png", "not a regular file"),
        ("huge.png", "max_read_mb"),
    ] {
        let started = Instant::now();
        let uri = format!("imagegen://images/{name}");
        let err = server
            .client
            .read_resource(ReadResourceRequestParams::new(uri.as_str()))
            .await
            .expect_err(name);
        let shown = err.to_string();
        assert!(shown.contains(why), "{name}: {shown}");
        assert!(
            !shown.contains(KEY_A) && !shown.contains("root:"),
            "{name}: {shown}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{name}");
    }
    // The listing shows none of them as images, and a real image still reads back.
    let made = call(
        &server,
        "generate_image",
        json!({"prompt": "x", "size": "64x64", "delivery": "link"}),
    )
    .await;
    let uri = made.structured_content.unwrap()["images"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let read = server
        .client
        .read_resource(ReadResourceRequestParams::new(uri.as_str()))
        .await
        .unwrap();
    assert!(matches!(
        read.contents[0],
        ResourceContents::BlobResourceContents { .. }
    ));
    let listed = server.client.list_all_resources().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert!(
        !names
            .iter()
            .any(|n| ["environ.png", "passwd.png", "pipe.png"].contains(n)),
        "{names:?}"
    );
    assert!(!server.stop().await.contains(KEY_A));
}
