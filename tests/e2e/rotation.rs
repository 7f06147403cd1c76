//! Live key rotation through the real binary (issue 3), driven by rmcp's client against a
//! wiremock OpenAI-compatible upstream that records which key each request carried, and when:
//!
//! - a rotation is picked up within 2 s by each way files get rewritten (in place, a rename
//!   over the file, delete and recreate, Kubernetes' `..data` symlink swap), and at once on
//!   SIGHUP;
//! - 2,000 calls from 32 concurrent callers while the key is rotated 50 times: none fails, and
//!   none uses a key older than the rotation bound;
//! - an invalid file mid-run changes nothing but the status, which says why without the key;
//! - key pools: cooldown on 429, disable on 401, a clear error when every key is down, and
//!   key state kept across reloads;
//! - `OPENAI_API_KEY` sits below the file, an `IMAGEGEN_*` key above it (with a warning);
//! - no output (tool results, status, `list_providers`, the server's stderr) shows a key.
//!
//! The tests run one at a time ([`SERIAL`]): they measure latencies, and the machine is small.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use crate::common::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProtocolVersion, ReadResourceRequestParams,
    ResourceContents,
};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

/// One test at a time: the rotation latencies must not include another test's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const A: &str = "sk-SENTINEL-rot-A-7d1e0c5b9a3f4e21aaaa";
const B: &str = "sk-SENTINEL-rot-B-2c8f6a1d0e9b7c34bbbb";
const C: &str = "sk-SENTINEL-rot-C-5e3a9d7c1b0f2a86cccc";
/// Written on a broken line of an invalid file: it must not show anywhere either.
const BROKEN: &str = "sk-SENTINEL-rot-X-9f0b2e4d6c8a1e35xxxx";

/// How soon a rotation must reach the upstream, through the watcher alone (the periodic
/// check runs every 30 s).
const WATCH_BOUND: Duration = Duration::from_secs(2);

/// How the server shows a key: `sk-…` and the last four characters.
fn fp(key: &str) -> String {
    format!("sk-…{}", &key[key.len() - 4..])
}

/// Fails if `text` holds any test key, whole or in part.
fn assert_no_key(what: &str, text: &str) {
    for key in [A, B, C, BROKEN] {
        assert!(!text.contains(key), "{what} shows the key {}", fp(key));
    }
    if let Some(at) = text.find("SENTINEL") {
        let line = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        panic!("{what} shows (part of) a key: {}", &text[line..end]);
    }
}

/// How the upstream answers a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// 200 with an image.
    Ok,
    /// 429 `rate_limit_exceeded` with `retry-after: 30`.
    RateLimited,
    /// 401 `invalid_api_key`.
    Rejected,
}

/// One request the upstream received.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    key: Option<String>,
    prompt: String,
}

#[derive(Debug, Default)]
struct Book {
    replies: HashMap<String, Reply>,
    seen: Vec<Seen>,
}

/// An OpenAI-compatible upstream answering each key as told; any other key gets a 401.
#[derive(Clone)]
struct Upstream {
    book: Arc<Mutex<Book>>,
    image: Arc<Value>,
    delay: Duration,
}

impl Upstream {
    async fn start(delay: Duration, replies: &[(&str, Reply)]) -> (MockServer, Self) {
        let png = png(64, 64).await;
        let upstream = Self {
            book: Arc::default(),
            image: Arc::new(json!({"created": 1, "data": [{"b64_json": b64(&png)}]})),
            delay,
        };
        upstream.set(replies);
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .respond_with(upstream.clone())
            .mount(&server)
            .await;
        (server, upstream)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, answers each key as `replies` says and rejects every other key.
    fn set(&self, replies: &[(&str, Reply)]) {
        self.book().replies = replies.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    }

    fn seen(&self) -> Vec<Seen> {
        self.book().seen.clone()
    }

    /// The keys of the requests received so far, in order.
    fn keys(&self) -> Vec<String> {
        self.book()
            .seen
            .iter()
            .map(|s| s.key.clone().unwrap_or_default())
            .collect()
    }

    /// When the first request carrying `key` arrived at or after `since`.
    fn first_with(&self, key: &str, since: Instant) -> Option<Instant> {
        self.book()
            .seen
            .iter()
            .find(|s| s.at >= since && s.key.as_deref() == Some(key))
            .map(|s| s.at)
    }
}

impl Respond for Upstream {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let at = Instant::now();
        let key = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(String::from);
        let prompt = request
            .body_json::<Value>()
            .ok()
            .and_then(|b| b["prompt"].as_str().map(String::from))
            .unwrap_or_default();
        let mut book = self.book();
        let reply = key
            .as_deref()
            .and_then(|k| book.replies.get(k).copied())
            .unwrap_or(Reply::Rejected);
        book.seen.push(Seen { at, key, prompt });
        drop(book);
        let template = match reply {
            Reply::Ok => ResponseTemplate::new(200).set_body_json(&*self.image),
            Reply::RateLimited => ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": {
                    "message": "Rate limit reached for gpt-image-1.5 in organization org-test on images per minute (IPM): Limit 5, Used 5, Requested 1.",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
            Reply::Rejected => ResponseTemplate::new(401).set_body_json(json!({"error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        };
        template.set_delay(self.delay)
    }
}

/// A server on a config file in a fresh home, its upstream, and every output seen.
struct Harness {
    server: Server,
    up: Upstream,
    _mock: MockServer,
    home: tempfile::TempDir,
    file: PathBuf,
    base: String,
    /// Every tool result and status text, checked for keys at the end.
    outputs: Mutex<Vec<String>>,
}

impl Harness {
    /// Starts the upstream, writes the config file with the keys `keys(home)` returns (as
    /// TOML lines of `[providers.openai]`), and starts `imagegen-mcp --config FILE serve`.
    async fn start(
        replies: &[(&str, Reply)],
        delay: Duration,
        rust_log: &str,
        keys: impl FnOnce(&Path) -> String,
    ) -> Self {
        Self::start_env(replies, delay, &[("RUST_LOG", rust_log)], keys).await
    }

    /// [`Harness::start`] with the environment `envs`.
    async fn start_env(
        replies: &[(&str, Reply)],
        delay: Duration,
        envs: &[(&str, &str)],
        keys: impl FnOnce(&Path) -> String,
    ) -> Self {
        let (mock, up) = Upstream::start(delay, replies).await;
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("imagegen.toml");
        let base = format!("{}/v1", mock.uri());
        let keys = keys(home.path());
        // Made now: created by the first image saved, it would be a change in the config
        // file's (watched) directory, and the reload check it causes could pick up a rotation
        // early, blurring the latencies measured.
        std::fs::create_dir_all(home.path().join("out")).unwrap();
        std::fs::write(&file, config(&base, home.path(), &keys, "")).unwrap();
        let server = Server::start_with(
            home.path(),
            &["--config", file.to_str().unwrap()],
            envs,
            ProtocolVersion::V_2025_11_25,
        )
        .await;
        Self {
            server,
            up,
            _mock: mock,
            home,
            file,
            base,
            outputs: Mutex::default(),
        }
    }

    /// The config file's text with `keys` under `[providers.openai]` and `output` under `[output]`.
    fn config(&self, keys: &str, output: &str) -> String {
        config(&self.base, self.home.path(), keys, output)
    }

    fn record(&self, text: String) {
        self.outputs.lock().unwrap().push(text);
    }

    async fn call(&self, prompt: &str) -> CallToolResult {
        let result = self
            .server
            .client
            .call_tool(generate(prompt))
            .await
            .expect("tools/call answered");
        self.record(serde_json::to_string(&result).unwrap());
        result
    }

    /// `imagegen://status`, read with `resources/read`.
    async fn status(&self) -> Value {
        let read = self
            .server
            .client
            .read_resource(ReadResourceRequestParams::new("imagegen://status"))
            .await
            .expect("status readable");
        let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
            panic!("the status is text");
        };
        self.record(text.clone());
        serde_json::from_str(text).expect("the status is JSON")
    }

    /// `list_providers`' structured result.
    async fn providers(&self) -> Value {
        let result = self
            .server
            .client
            .call_tool(CallToolRequestParams::new("list_providers"))
            .await
            .unwrap();
        self.record(serde_json::to_string(&result).unwrap());
        result.structured_content.expect("structured content")
    }

    /// Reads the status until `done` holds for it, for at most `limit`.
    async fn wait_status(&self, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let status = self.status().await;
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

    /// Stops the server and checks every output and its stderr for keys; returns the stderr.
    async fn finish(self) -> String {
        let stderr = self.server.stop().await;
        for (i, text) in self.outputs.lock().unwrap().iter().enumerate() {
            assert_no_key(&format!("output {i}"), text);
        }
        assert_no_key("the server's stderr", &stderr);
        stderr
    }
}

fn config(base: &str, home: &Path, keys: &str, output: &str) -> String {
    format!(
        "default_provider = \"openai\"\n\n\
         # The defaults, spelled out: only the watcher can apply a change within seconds.\n\
         [reload]\npoll_s = 30\ndebounce_ms = 300\n\n\
         [output]\ndir = \"{}\"\ndelivery = \"link\"\n{output}\n\n\
         [providers.openai]\nbase_url = \"{base}\"\n{keys}\n",
        home.join("out").display()
    )
}

fn generate(prompt: &str) -> CallToolRequestParams {
    CallToolRequestParams::new("generate_image").with_arguments(args(json!({"prompt": prompt})))
}

fn ok(result: &CallToolResult) -> bool {
    result.is_error == Some(false)
}

/// The fingerprints and states of the openai provider's keys in a status or `list_providers`.
fn key_states(view: &Value) -> Vec<(String, String)> {
    let openai = view["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["name"] == "openai")
        .expect("the openai provider");
    openai["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["fingerprint"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn key_info<'a>(view: &'a Value, key: &str) -> &'a Value {
    view["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["fingerprint"] == fp(key).as_str())
        .unwrap_or_else(|| panic!("{} listed: {view:#}", fp(key)))
}

fn active(keys: &[&str]) -> Vec<(String, String)> {
    keys.iter().map(|k| (fp(k), "active".to_string())).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Rotation by each way of writing files.

/// How a rotation is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Truncate and rewrite the config file (`echo > file`, many tools).
    InPlace,
    /// Write a temporary file in the same directory and rename it over (vim, IDEs, `sed -i`).
    RenameOver,
    /// Delete the config file, then create it again.
    DeleteRecreate,
    /// A Kubernetes Secret volume: kubelet's AtomicWriter swaps the `..data` symlink.
    Kubernetes,
}

/// The Kubernetes secret volume inside `home`.
fn secret_dir(home: &Path) -> PathBuf {
    home.join("secret")
}

fn k8s_version_dir(version: u32) -> String {
    format!("..2026_11_24_v{version}")
}

/// Lays out a mounted Secret holding `key` as kubelet does:
/// `..2026_11_24_v1/key`, `..data -> ..2026_11_24_v1`, `key -> ..data/key`.
fn k8s_mount(dir: &Path, key: &str) {
    use std::os::unix::fs::symlink;
    let v1 = dir.join(k8s_version_dir(1));
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("key"), key).unwrap();
    symlink(k8s_version_dir(1), dir.join("..data")).unwrap();
    symlink("..data/key", dir.join("key")).unwrap();
}

/// Updates the Secret as kubelet's AtomicWriter does: a new timestamped directory, a
/// `..data_tmp` symlink to it renamed over `..data`, then the old directory removed.
fn k8s_swap(dir: &Path, from: u32, to: u32, key: &str) {
    let new = dir.join(k8s_version_dir(to));
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("key"), key).unwrap();
    std::os::unix::fs::symlink(k8s_version_dir(to), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(k8s_version_dir(from))).unwrap();
}

fn inline_key(key: &str) -> String {
    format!("api_key = \"{key}\"")
}

/// Writes `text` to `file` as `how` says.
fn rewrite(how: Write, file: &Path, text: &str) {
    match how {
        Write::InPlace => std::fs::write(file, text).unwrap(),
        Write::RenameOver => {
            let tmp = file.with_file_name(".imagegen.toml.swp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, file).unwrap();
        }
        Write::DeleteRecreate => {
            std::fs::remove_file(file).unwrap();
            std::fs::write(file, text).unwrap();
        }
        Write::Kubernetes => unreachable!("the config file stays; the secret changes"),
    }
}

/// Starts on key A, then rotates A → B and B → C by `how`; after each write the upstream
/// accepts only the new key, and a `generate_image` call every 100 ms must carry the new key
/// to the upstream within [`WATCH_BOUND`].
async fn rotation_by(how: Write) {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(&[(A, Reply::Ok)], Duration::ZERO, "debug", |home| {
        if how == Write::Kubernetes {
            let dir = secret_dir(home);
            k8s_mount(&dir, A);
            format!("api_key_file = \"{}\"", dir.join("key").display())
        } else {
            inline_key(A)
        }
    })
    .await;

    // Before any write the upstream has seen A, and only A: success cannot come by accident.
    let first = h.call("before the rotation").await;
    assert!(ok(&first), "{first:?}");
    assert_eq!(h.up.keys(), [A]);

    let mut figures = Vec::new();
    for (version, (old, new)) in [(A, B), (B, C)].into_iter().enumerate() {
        let version = version as u32 + 1;
        h.up.set(&[(new, Reply::Ok)]);
        let written = Instant::now();
        let written_wall = time::OffsetDateTime::now_utc();
        match how {
            Write::Kubernetes => k8s_swap(&secret_dir(h.home.path()), version, version + 1, new),
            _ => rewrite(how, &h.file, &h.config(&inline_key(new), "")),
        }
        let wrote_in = written.elapsed();

        // Poll as a client would, until the upstream sees the new key.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls = 0;
        let reached = loop {
            tick.tick().await;
            polls += 1;
            let result = h
                .call(&format!("poll {polls} after rotation {version}"))
                .await;
            if let Some(at) = h.up.first_with(new, written) {
                assert!(
                    ok(&result),
                    "the call carrying the new key succeeds: {result:?}"
                );
                break Some(at);
            }
            if written.elapsed() > WATCH_BOUND * 3 {
                break None;
            }
        };
        let latency = reached.map(|at| at.duration_since(written));
        // When the server published the change, by its own clock: finer than the 100 ms polls.
        let status = h.status().await;
        let applied = status["loaded_at"]
            .as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok())
            .map(|t| (t - written_wall).whole_milliseconds());
        eprintln!(
            "rotation latency, {how:?}, {} -> {}: first request with the new key after {}, \
             published by the server after {} ms (the write took {} us; {polls} polls)",
            fp(old),
            fp(new),
            latency.map_or("(not within 6 s)".into(), |l| format!(
                "{} ms",
                l.as_millis()
            )),
            applied.unwrap_or(-1),
            wrote_in.as_micros()
        );
        let latency = latency.expect("the new key reached the upstream");
        assert!(
            latency <= WATCH_BOUND,
            "{how:?}: the new key reached the upstream after {latency:?}"
        );
        figures.push((latency.as_millis(), applied.unwrap_or(-1)));

        assert_eq!(key_states(&status), active(&[new]), "{status:#}");
        assert_eq!(status["generation"], version as u64 + 1, "{status:#}");
        assert_eq!(status["reload_errors"], 0, "{status:#}");
        assert!(status["last_reload_error"].is_null(), "{status:#}");
        if how == Write::Kubernetes {
            let source = key_info(&status, new)["source"].as_str().unwrap();
            let mounted = secret_dir(h.home.path()).join("key");
            assert_eq!(source, format!("api_key_file {}", mounted.display()));
        }
    }
    let providers = h.providers().await;
    assert_eq!(key_states(&providers), active(&[C]));
    assert_eq!(providers["config"]["generation"], 3);

    let stderr = h.finish().await;
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    eprintln!("rotation latencies, {how:?} (first request ms, published ms): {figures:?}");
}

#[tokio::test]
async fn rotation_in_place_write_reaches_the_upstream_within_2_s() {
    rotation_by(Write::InPlace).await;
}

#[tokio::test]
async fn rotation_rename_over_reaches_the_upstream_within_2_s() {
    rotation_by(Write::RenameOver).await;
}

#[tokio::test]
async fn rotation_delete_and_recreate_reaches_the_upstream_within_2_s() {
    rotation_by(Write::DeleteRecreate).await;
}

#[tokio::test]
async fn rotation_kubernetes_secret_swap_reaches_the_upstream_within_2_s() {
    rotation_by(Write::Kubernetes).await;
}

/// `kill -HUP` reloads at once, for a change that file events do not report: the key file is
/// rewritten in place through another name for it (a hard link here; a file bind-mounted into
/// a container edited from the host is the same case), so no watched directory sees an event.
#[tokio::test]
async fn sighup_reloads_at_once() {
    let _serial = SERIAL.lock().await;
    let host = std::cell::OnceCell::new();
    let h = Harness::start(&[(A, Reply::Ok)], Duration::ZERO, "debug", |home| {
        let (keys, elsewhere) = (home.join("keys"), home.join("host"));
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(keys.join("key"), A).unwrap();
        std::fs::hard_link(keys.join("key"), elsewhere.join("key")).unwrap();
        host.set(elsewhere.join("key")).unwrap();
        format!("api_key_file = \"{}\"", keys.join("key").display())
    })
    .await;
    assert!(ok(&h.call("before").await));
    assert_eq!(h.up.keys(), [A]);

    h.up.set(&[(B, Reply::Ok)]);
    std::fs::write(host.get().unwrap(), B).unwrap();
    // Well past the debounce: whatever the watcher makes of it is done.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen_by_watcher = key_states(&h.status().await) == active(&[B]);

    let signalled = Instant::now();
    let pid = h.server.pid.expect("the server's pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = h
        .wait_status(WATCH_BOUND, |s| key_states(s) == active(&[B]))
        .await;
    let applied = signalled.elapsed();
    assert_eq!(status["reload_errors"], 0, "{status:#}");
    assert!(
        ok(&h.call("after SIGHUP").await),
        "the server survives SIGHUP"
    );
    assert_eq!(h.up.keys().last().map(String::as_str), Some(B));
    eprintln!(
        "SIGHUP: the new key was in force {} ms after the signal (the watcher alone had {}seen \
         the change)",
        applied.as_millis(),
        if seen_by_watcher { "" } else { "not " }
    );
    let stderr = h.finish().await;
    assert!(
        stderr.contains("SIGHUP: reloading the configuration"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Under load.

/// 32 callers on one connection make 2,000 calls while a writer rotates the key 50 times,
/// spread over the run. Each rotation writes a key of its own (a rotation between only two keys
/// would make "a stale key" undetectable); the upstream accepts every one of them.
///
/// For each call, its start time (taken by the client, before sending) gives the key in force
/// then: the most recent write at or before it. The request's key may lag that by writes made
/// less than [`WATCH_BOUND`] before the call started (a reload in progress), never by older
/// ones; and it can never be a key written after the request arrived. The server takes its
/// snapshot a little after the client's start time, so a key written in between is counted and
/// printed rather than refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_call_and_uses_no_stale_key() {
    const CALLS: usize = 2_000;
    const CALLERS: usize = 32;
    const ROTATIONS: usize = 50;
    let _serial = SERIAL.lock().await;
    let keys: Vec<String> = (0..=ROTATIONS)
        .map(|i| format!("sk-SENTINEL-rot-load-{i:02}-4b1f9e7c2d5a8k{i:03}"))
        .collect();
    let replies: Vec<(&str, Reply)> = keys.iter().map(|k| (k.as_str(), Reply::Ok)).collect();
    let h = Arc::new(
        Harness::start(&replies, Duration::from_millis(20), "info", |_| {
            inline_key(&keys[0])
        })
        .await,
    );
    let warm = h.call("warm-up").await;
    assert!(ok(&warm), "{warm:?}");

    let begin = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    // When each rotation's write started; index 0 (the first key) is in force from the start.
    let writes = Arc::new(Mutex::new(vec![begin]));

    let writer = {
        let (h, done, writes, keys) = (h.clone(), done.clone(), writes.clone(), keys.clone());
        tokio::spawn(async move {
            for (i, key) in keys.iter().enumerate().skip(1) {
                while done.load(Ordering::Relaxed) < i * CALLS / (ROTATIONS + 1) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                writes.lock().unwrap().push(Instant::now());
                rewrite(Write::RenameOver, &h.file, &h.config(&inline_key(key), ""));
            }
        })
    };

    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let peer = h.server.client.peer().clone();
        let (done, next) = (done.clone(), next.clone());
        callers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CALLS {
                    return mine;
                }
                let started = Instant::now();
                let result = peer.call_tool(generate(&format!("load call {i}"))).await;
                done.fetch_add(1, Ordering::Relaxed);
                let text = match &result {
                    Ok(r) => serde_json::to_string(r).unwrap(),
                    Err(e) => format!("{e}"),
                };
                assert_no_key(&format!("the result of call {i}"), &text);
                let failed = !matches!(&result, Ok(r) if ok(r));
                mine.push((i, started, failed.then_some(text)));
            }
        }));
    }
    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.unwrap());
    }
    let elapsed = begin.elapsed();
    writer.await.unwrap();
    calls.sort_by_key(|c| c.0);
    assert_eq!(calls.len(), CALLS);

    let failures: Vec<_> = calls
        .iter()
        .filter_map(|(i, _, f)| f.as_ref().map(|f| (i, f)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls failed; the first: {:?}",
        failures.len(),
        failures.first()
    );

    // Every request against the writes around its call.
    let writes = writes.lock().unwrap().clone();
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let in_force = |t: Instant| writes.iter().rposition(|w| *w <= t).unwrap_or(0);
    let seen = h.up.seen();
    let by_prompt: HashMap<&str, Vec<&Seen>> = seen.iter().fold(HashMap::new(), |mut m, s| {
        m.entry(s.prompt.as_str()).or_default().push(s);
        m
    });
    // How far behind the key in force at the call's start each request's key was.
    let (mut same, mut previous, mut older, mut newer, mut worst) = (0, 0, 0, 0, 0usize);
    // The longest a newer key had been written when a call started that did not use it yet.
    let mut stalest = Duration::ZERO;
    for (i, started, _) in &calls {
        let requests = by_prompt
            .get(format!("load call {i}").as_str())
            .unwrap_or_else(|| panic!("call {i} reached the upstream"));
        for request in requests {
            let key = request.key.as_deref().expect("a key was sent");
            let used = *index.get(key).expect("one of the rotation's keys");
            let current = in_force(*started);
            let floor = started.checked_sub(WATCH_BOUND).map_or(0, in_force);
            assert!(
                used >= floor,
                "call {i} used key {used}, but key {floor} had been written more than \
                 {WATCH_BOUND:?} before the call started (key {current} was current)"
            );
            assert!(
                used <= in_force(request.at),
                "call {i} used key {used} before it was written"
            );
            if used < current {
                stalest = stalest.max(started.duration_since(writes[used + 1]));
            }
            match current.checked_sub(used) {
                Some(0) => same += 1,
                Some(1) => previous += 1,
                Some(n) => {
                    older += 1;
                    worst = worst.max(n);
                }
                None => newer += 1,
            }
        }
    }
    assert_eq!(
        seen.len(),
        CALLS + 1,
        "one request per call (and the warm-up)"
    );

    // The last key is applied, and the server counted its reloads without an error.
    let last = &keys[ROTATIONS];
    let status = h
        .wait_status(WATCH_BOUND * 2, |s| key_states(s) == active(&[last]))
        .await;
    assert_eq!(status["reload_errors"], 0, "{status:#}");
    let reloads = status["reloads"].as_u64().unwrap();
    assert!(reloads >= 2, "{status:#}");
    let after = h.call("after the rotations").await;
    assert!(ok(&after));
    assert_eq!(h.up.keys().last(), Some(last));

    let spacing = writes[writes.len() - 1].duration_since(writes[1]) / (ROTATIONS as u32 - 1);
    eprintln!(
        "load: {CALLS} calls from {CALLERS} callers on one connection in {:.2} s \
         ({:.0} calls/s, upstream latency 20 ms), 0 failed; {ROTATIONS} rotations about {} ms \
         apart, {reloads} reloads published; key used vs the latest write at call start: \
         {same} that one, {previous} the one before, {older} older (at most {worst} behind), \
         {newer} newer; a call started at most {} ms after a newer key was written",
        elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64(),
        spacing.as_millis(),
        stalest.as_millis()
    );
    let h = Arc::into_inner(h).expect("the writer is done");
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Invalid files mid-run.

/// Broken files while calls run: nothing fails, the status says why (without the key on the
/// broken line) and counts it; the fixed file clears the error and its key is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_mid_run_changes_nothing_but_the_status() {
    let _serial = SERIAL.lock().await;
    let h = Arc::new(
        Harness::start(
            &[(A, Reply::Ok), (B, Reply::Ok)],
            Duration::ZERO,
            "debug",
            |_| inline_key(A),
        )
        .await,
    );
    assert!(ok(&h.call("before").await));

    // Callers keep going through all of it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..4 {
        let (h, stop) = (h.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let (mut n, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let result = h.call(&format!("caller {c} call {n}")).await;
                if !ok(&result) {
                    failed.push(format!("{result:?}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, failed)
        }));
    }

    let good = |keys: &str| h.config(keys, "");
    let broken = [
        (
            "an unterminated string on the key's line",
            good(&format!("api_key = \"{BROKEN}")),
            "invalid TOML",
        ),
        (
            "a bare key",
            good(&format!("api_key = {BROKEN}")),
            "invalid TOML",
        ),
        (
            "a key where a list belongs",
            good(&format!("api_keys = \"{BROKEN}\"")),
            "expected an array, found a string",
        ),
        ("an empty file", String::new(), "is empty"),
    ];
    for (what, text, expect) in &broken {
        let before = h.status().await["reload_errors"].as_u64().unwrap();
        std::fs::write(&h.file, text).unwrap();
        let status = h
            .wait_status(WATCH_BOUND * 2, |s| {
                s["reload_errors"].as_u64().unwrap() > before
                    && s["last_reload_error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(expect))
            })
            .await;
        let error = &status["last_reload_error"];
        let message = error["message"].as_str().expect("a reason");
        eprintln!("reload error for {what}: {message}");
        assert!(message.contains(expect), "{what}: {message}");
        assert!(
            message.contains(h.file.to_str().unwrap()) || message.contains("providers.openai"),
            "{what}: the message says where: {message}"
        );
        assert!(error["at"].as_str().is_some_and(|at| at.ends_with('Z')));
        assert_eq!(status["generation"], 1, "{what}: nothing published");
        assert_eq!(key_states(&status), active(&[A]), "{what}");
        let providers = h.providers().await;
        assert_eq!(providers["config"]["last_reload_error"], *error);
    }
    // Everything so far went out with A.
    assert!(h.up.keys().iter().all(|k| k == A));

    std::fs::write(&h.file, good(&inline_key(B))).unwrap();
    let status = h
        .wait_status(WATCH_BOUND * 2, |s| s["last_reload_error"].is_null())
        .await;
    assert_eq!(key_states(&status), active(&[B]), "{status:#}");
    assert_eq!(status["generation"], 2);
    assert!(status["reload_errors"].as_u64().unwrap() >= broken.len() as u64);
    let since = Instant::now();
    assert!(ok(&h.call("after the fix").await));
    assert!(h.up.first_with(B, since).is_some(), "the new key is used");

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        let (n, failed) = caller.await.unwrap();
        assert!(failed.is_empty(), "calls failed: {failed:?}");
        total += n;
    }
    assert!(total >= 20, "the callers ran throughout ({total} calls)");
    eprintln!(
        "invalid files: {total} calls while {} broken files came and went, none failed",
        broken.len()
    );
    let h = Arc::into_inner(h).unwrap();
    let stderr = h.finish().await;
    assert!(stderr.contains("configuration reload failed"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 4. Key pools through the binary.

fn pool(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!("api_keys = [{}]", keys.join(", "))
}

/// A rate-limited key cools down and the call moves to the next; the cooldown is shown and
/// survives reloads, an unrelated edit and an added key alike.
#[tokio::test]
async fn a_rate_limited_key_cools_down_and_stays_cooling_across_reloads() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(
        &[(A, Reply::RateLimited), (B, Reply::Ok), (C, Reply::Ok)],
        Duration::ZERO,
        "debug",
        |_| pool(&[A, B]),
    )
    .await;
    let result = h.call("one").await;
    assert!(ok(&result), "{result:?}");
    assert_eq!(h.up.keys(), [A, B], "A first, then B");

    let check = |view: &Value, others: &[&str]| {
        let a = key_info(view, A);
        assert_eq!(a["state"], "cooling_down", "{view:#}");
        let wait = a["usable_in_s"].as_u64().expect("usable_in_s");
        assert!((1..=30).contains(&wait), "{view:#}");
        let until = a["until"].as_str().expect("until");
        let until = time::OffsetDateTime::parse(until, &Rfc3339).expect("RFC 3339");
        let left = until - time::OffsetDateTime::now_utc();
        assert!(
            left > time::Duration::ZERO && left <= time::Duration::seconds(31),
            "{view:#}"
        );
        for key in others {
            assert_eq!(key_info(view, key)["state"], "active", "{view:#}");
        }
    };
    check(&h.status().await, &[B]);
    check(&h.providers().await, &[B]);

    // An unrelated change: a new snapshot, the same key state.
    std::fs::write(
        &h.file,
        h.config(&pool(&[A, B]), "preview_budget_bytes = 60000"),
    )
    .unwrap();
    let status = h
        .wait_status(WATCH_BOUND * 2, |s| s["generation"] == 2)
        .await;
    check(&status, &[B]);

    // A key added: a new pool, A still cooling down.
    std::fs::write(
        &h.file,
        h.config(&pool(&[A, B, C]), "preview_budget_bytes = 60000"),
    )
    .unwrap();
    let status = h
        .wait_status(WATCH_BOUND * 2, |s| s["generation"] == 3)
        .await;
    check(&status, &[B, C]);
    assert_eq!(key_states(&status).len(), 3);
    // Calls go round B and C, never A.
    for n in 0..4 {
        assert!(ok(&h.call(&format!("after {n}")).await));
    }
    let keys = h.up.keys();
    assert!(
        keys[2..].iter().all(|k| k == B || k == C),
        "{:?}",
        keys.iter().map(|k| fp(k)).collect::<Vec<_>>()
    );
    h.finish().await;
}

/// A rejected key is disabled with a reason and the call moves on to the next key.
#[tokio::test]
async fn a_rejected_key_is_disabled_and_the_call_succeeds_with_the_next() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(
        &[(A, Reply::Rejected), (B, Reply::Ok)],
        Duration::ZERO,
        "debug",
        |_| pool(&[A, B]),
    )
    .await;
    let result = h.call("one").await;
    assert!(ok(&result), "{result:?}");
    assert_eq!(h.up.keys(), [A, B]);
    for view in [h.status().await, h.providers().await] {
        let a = key_info(&view, A);
        assert_eq!(a["state"], "disabled", "{view:#}");
        let reason = a["reason"].as_str().expect("a reason");
        assert!(reason.contains("401"), "{reason}");
        assert!(
            a["usable_in_s"].as_u64().is_some(),
            "when it is tried again: {view:#}"
        );
        assert_eq!(key_info(&view, B)["state"], "active");
    }
    // The next calls skip A.
    assert!(ok(&h.call("two").await));
    assert_eq!(h.up.keys(), [A, B, B]);
    h.finish().await;
}

/// Every key rejected: the call fails at once with an `auth` error that says why and when
/// the keys are tried again, and names no key.
#[tokio::test]
async fn all_keys_down_is_a_clear_auth_error_without_keys() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(&[], Duration::ZERO, "debug", |_| pool(&[A, B])).await;
    for (n, requests) in [(1, 2), (2, 2)] {
        let result = h.call(&format!("call {n}")).await;
        assert_eq!(result.is_error, Some(true), "{result:?}");
        assert_no_key("the error", &serde_json::to_string(&result).unwrap());
        let error = &result.structured_content.as_ref().expect("structured")["error"];
        assert_eq!(error["kind"], "auth", "{error:#}");
        assert_eq!(error["retryable"], false);
        let message = error["message"].as_str().unwrap();
        eprintln!("all keys down, call {n}: {message}");
        for key in [A, B] {
            assert!(
                message.contains(&format!("{} disabled", fp(key))),
                "{message}"
            );
        }
        assert!(message.contains("401"), "why: {message}");
        assert!(message.contains("tried again in 600 s"), "when: {message}");
        let text = result.content[0]
            .as_text()
            .expect("a text block")
            .text
            .clone();
        assert!(text.contains("tried again in"), "{text}");
        assert_eq!(
            h.up.keys().len(),
            requests,
            "no request once both keys are disabled"
        );
    }
    let status = h.status().await;
    assert_eq!(
        key_states(&status),
        [(fp(A), "disabled".into()), (fp(B), "disabled".into())]
    );
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Keys from the environment.

/// `OPENAI_API_KEY` sits below the file, so the file's key wins; an `IMAGEGEN_*` key sits
/// above it and hides the file's keys, and the server warns about it at start and on each
/// reload, since that is why a key rotated in the file is not used.
#[tokio::test]
async fn environment_keys_and_the_file() {
    let _serial = SERIAL.lock().await;
    let shadow_warning = "overrides the config file's";

    let h = Harness::start_env(
        &[(A, Reply::Ok), (C, Reply::Ok)],
        Duration::ZERO,
        &[("OPENAI_API_KEY", C)],
        |_| inline_key(A),
    )
    .await;
    assert!(ok(&h.call("one").await));
    assert_eq!(h.up.keys(), [A], "the file's key wins over OPENAI_API_KEY");
    let stderr = h.finish().await;
    assert!(!stderr.contains(shadow_warning), "{stderr}");

    let h = Harness::start_env(
        &[(A, Reply::Ok), (B, Reply::Ok), (C, Reply::Ok)],
        Duration::ZERO,
        &[("IMAGEGEN_PROVIDERS__OPENAI__API_KEY", C)],
        |_| inline_key(A),
    )
    .await;
    assert!(ok(&h.call("one").await));
    std::fs::write(&h.file, h.config(&inline_key(B), "")).unwrap();
    let status = h.wait_status(WATCH_BOUND, |s| s["generation"] == 2).await;
    assert_eq!(key_states(&status), active(&[C]));
    assert_eq!(
        key_info(&status, C)["source"],
        "env IMAGEGEN_PROVIDERS__OPENAI__API_KEY"
    );
    assert!(ok(&h.call("two").await));
    assert_eq!(h.up.keys(), [C, C], "the environment's key, both times");
    let stderr = h.finish().await;
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(shadow_warning))
        .count();
    assert_eq!(warnings, 2, "at start and on the reload: {stderr}");
}
