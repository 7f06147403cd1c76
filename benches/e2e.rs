//! End-to-end benchmark of the real `imagegen-mcp` binary: `cargo bench --bench e2e`.
//!
//! A fake OpenAI image API (axum, loopback only, fixed delay, a precomputed ~1.5 MB PNG
//! answer) stands in for the upstream; the release binary runs `serve` with a clean
//! environment and a config file of its own, and rmcp's client drives it over the child's
//! stdio, as an MCP client would. The bench measures the latency the server adds to a call,
//! throughput with 1, 8 and 64 calls in flight, memory, start-up, configuration reload and
//! the mock provider, prints a table with each figure against its target, and writes the
//! same as JSON to `target/bench-e2e.json`. See `docs/benchmarks.md`.
//!
//! The `http` phase runs `serve --http` and, side by side on the same fake and with the same
//! client (rmcp's, over streamable HTTP), the peer `gpt-image-mcp` 0.1.1 from PyPI, which it
//! installs into `target/bench-peer-venv` and runs with `fastmcp run ... --transport http`.
//! Without Python or PyPI the phase measures this server alone and says why the peer is
//! missing.
//!
//! `cargo bench --bench e2e -- latency reload` runs only the phases named (see [`PHASES`]).

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use base64::Engine as _;
use imagegen_mcp::storage::{ImageStore, Provenance};
use imagegen_providers::{
    mock::{MockProvider, MockSettings, MOCK_MODEL},
    openai::{OpenAiProvider, OpenAiSettings},
    GenerateRequest, ImageProviderExt,
};
use imagegen_testkit::img;
use rmcp::{
    model::{CallToolRequestParams, ClientConfig, ProtocolVersion},
    service::RunningService,
    ClientHandler, Peer, RoleClient, ServiceExt,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Upstream delay of the latency runs.
const LATENCY_DELAY: Duration = Duration::from_millis(200);
/// Upstream delay of the throughput and memory runs.
const THROUGHPUT_DELAY: Duration = Duration::from_millis(500);
/// Sequential MCP calls per delivery mode in the latency runs.
const LATENCY_CALLS: usize = 200;
/// Sequential direct HTTP calls of the baseline.
const BASELINE_CALLS: usize = 100;
/// `(calls in flight, calls measured)` of the throughput runs.
const THROUGHPUT_RUNS: [(usize, usize); 3] = [(1, 12), (8, 96), (64, 768)];
/// How far upstream times stray from their mean in the varied throughput runs, in percent.
const JITTER_PCT: u64 = 50;
/// Server starts timed.
const STARTS: usize = 20;
/// Key rotations timed.
const RELOADS: usize = 10;
/// Upstream delay of the reload runs: one call every few milliseconds.
const RELOAD_DELAY: Duration = Duration::from_millis(5);
/// Images drawn by the mock provider, per run.
const MOCK_CALLS: usize = 60;
/// The fake refuses every request after this many: a runaway loop cannot hammer it forever.
const MAX_UPSTREAM_REQUESTS: usize = 12_000;
/// The side of the generated images.
const SIDE: u32 = 1024;

// ---------------------------------------------------------------------------------------
// The fake upstream
// ---------------------------------------------------------------------------------------

/// What the fake OpenAI API answers with and what it has seen; shared with its handler.
struct Upstream {
    /// `http://127.0.0.1:PORT/v1`.
    base_url: String,
    /// Delay before each answer, microseconds.
    delay_us: AtomicU64,
    /// How far each delay strays from `delay_us`, at most, in percent (mean unchanged).
    jitter_pct: AtomicU64,
    /// The whole response body, precomputed.
    body: Mutex<Bytes>,
    /// Requests received.
    requests: AtomicUsize,
    /// Requests being answered now, and the most at once since [`Upstream::take_peak`].
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// When each bearer token was first seen.
    first_seen: Mutex<HashMap<String, Instant>>,
}

impl Upstream {
    /// Serves `POST /v1/images/generations` on a loopback port.
    async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Arc::new(Self {
            base_url: format!("http://{}/v1", listener.local_addr().unwrap()),
            delay_us: AtomicU64::new(0),
            jitter_pct: AtomicU64::new(0),
            body: Mutex::new(Bytes::new()),
            requests: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            first_seen: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/v1/images/generations", post(generations))
            .with_state(upstream.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        upstream
    }

    /// Answers every request after `delay` with `png` as the one image.
    fn answer(&self, delay: Duration, png: &[u8]) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
        self.jitter(0);
        *self.body.lock().unwrap() = images_response(png);
    }

    /// Spreads each delay uniformly within ±`pct` percent of it, as a real model's times vary.
    fn jitter(&self, pct: u64) {
        self.jitter_pct.store(pct, Ordering::SeqCst);
    }

    /// The most requests answered at once since the last call.
    fn take_peak(&self) -> usize {
        self.peak_in_flight.swap(0, Ordering::SeqCst)
    }

    /// When a request carrying `key` first arrived.
    fn first_seen(&self, key: &str) -> Option<Instant> {
        self.first_seen.lock().unwrap().get(key).copied()
    }
}

/// The handler of the fake: records the key, waits, answers with the precomputed body.
async fn generations(
    State(up): State<Arc<Upstream>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let index = up.requests.fetch_add(1, Ordering::SeqCst);
    if index >= MAX_UPSTREAM_REQUESTS {
        return (
            StatusCode::BAD_REQUEST,
            "request budget of the bench exhausted",
        )
            .into_response();
    }
    if let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        up.first_seen
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_insert(arrived);
    }
    let spread = up.jitter_pct.load(Ordering::SeqCst) as f64 / 100.0;
    let delay = Duration::from_micros(up.delay_us.load(Ordering::SeqCst))
        .mul_f64(1.0 + spread * unit(index as u64));
    let body = up.body.lock().unwrap().clone();
    let now = up.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    up.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep_until((arrived + delay).into()).await;
    up.in_flight.fetch_sub(1, Ordering::SeqCst);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A deterministic pseudo-random number in [-1, 1) for request `n` (splitmix64).
fn unit(n: u64) -> f64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// An Images API response holding `png` as base64, as OpenAI sends it.
fn images_response(png: &[u8]) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let usage = json!({"input_tokens": 12, "output_tokens": 4160, "total_tokens": 4172,
        "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}});
    let body = json!({"created": 1, "data": [{"b64_json": b64}], "usage": usage});
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// The MCP client: rmcp's, asking for the 2025-11-25 revision (the one with `initialize`).
#[derive(Debug, Clone, Default)]
struct Client;

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info
    }
}

/// What a server is configured with.
#[derive(Debug, Clone)]
enum Provider {
    /// The fake upstream, with this API key.
    OpenAi { base_url: String, key: String },
    /// The built-in mock.
    Mock,
}

/// The config file for `provider` with `delivery` (`link` or `preview`), images under `out`.
fn config_toml(provider: &Provider, delivery: &str, out: &Path) -> String {
    let mut toml = format!(
        "[output]\ndir = {:?}\ndelivery = \"{delivery}\"\n\n",
        out.display().to_string()
    );
    match provider {
        Provider::OpenAi { base_url, key } => {
            toml = format!("default_provider = \"openai\"\n{toml}");
            let _ = write!(
                toml,
                "[providers.openai]\nkind = \"openai\"\nbase_url = \"{base_url}\"\n\
                 api_key = \"{key}\"\nmax_retries = 0\n"
            );
        }
        Provider::Mock => {
            toml = format!("default_provider = \"mock\"\n{toml}");
            toml.push_str("[providers.mock]\nkind = \"mock\"\nlatency_ms = 0\n");
        }
    }
    toml
}

/// A running `imagegen-mcp serve` and the MCP client on its stdio.
struct Server {
    client: RunningService<RoleClient, Client>,
    child: Child,
    pid: u32,
    /// From the spawn to the answer of the first `tools/list`.
    started_in: Duration,
    /// The config file the server watches.
    config: PathBuf,
    /// HOME, the config directory, the output directory and the server's log.
    home: tempfile::TempDir,
}

impl Server {
    /// Writes the config file, starts the binary with a clean environment, connects, and
    /// lists the tools once.
    async fn start(provider: &Provider, delivery: &str) -> Self {
        Self::start_with(provider, delivery, &[]).await
    }

    /// [`Server::start`] with `env` added to the server's clean environment.
    async fn start_with(provider: &Provider, delivery: &str, env: &[(String, String)]) -> Self {
        let home = tempfile::tempdir().unwrap();
        // The config sits alone in its directory: the watcher sees no image or log writes.
        let config_dir = home.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        let config = config_dir.join("imagegen.toml");
        let out = home.path().join("images");
        std::fs::write(&config, config_toml(provider, delivery, &out)).unwrap();
        let log = std::fs::File::create(home.path().join("server.log")).unwrap();

        // `E2E_BIN` in `E2E_AB` runs another build as the second server (an A/B of two commits).
        let binary = env
            .iter()
            .find(|(k, _)| k == "E2E_BIN")
            .map_or(env!("CARGO_BIN_EXE_imagegen-mcp"), |(_, v)| v.as_str());
        let start = Instant::now();
        let mut child = Command::new(binary)
            .env_clear()
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_DATA_HOME", home.path().join(".local/share"))
            .current_dir(home.path())
            .envs(env.iter().filter(|(k, _)| k != "E2E_BIN").cloned())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn imagegen-mcp");
        let pid = child.id().unwrap();
        let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let client = match Client.serve(io).await {
            Ok(client) => client,
            Err(e) => panic!("MCP handshake: {e}\n{}", server_log(home.path())),
        };
        let tools = client.list_tools(None).await.expect("tools/list");
        let started_in = start.elapsed();
        assert!(tools.tools.iter().any(|t| t.name == "generate_image"));
        Self {
            client,
            child,
            pid,
            started_in,
            config,
            home,
        }
    }

    /// A handle for concurrent calls on this one connection.
    fn peer(&self) -> Peer<RoleClient> {
        self.client.peer().clone()
    }

    /// `(VmHWM, VmRSS)` of the server process, MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU time the server has used so far, milliseconds.
    fn cpu_ms(&self) -> f64 {
        cpu_ms(&format!("/proc/{}/stat", self.pid))
    }

    /// Closes the connection and waits for the server to exit (killing it after 5 s).
    async fn stop(mut self) {
        let _ = self.client.cancel().await;
        let wait = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if !matches!(wait, Ok(Ok(_))) {
            eprintln!(
                "warning: server {} did not exit after stdin closed; killing it",
                self.pid
            );
            let _ = self.child.kill().await;
        }
        drop(self.home);
    }
}

/// User plus system CPU time of all threads of a process, from its `/proc/PID/stat`, in ms.
fn cpu_ms(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the line, in USER_HZ (100 per second on Linux).
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) * 10.0,
        _ => f64::NAN,
    }
}

/// The server's stderr so far, for error messages.
fn server_log(home: &Path) -> String {
    std::fs::read_to_string(home.join("server.log")).unwrap_or_default()
}

/// One `generate_image` call of a 1024x1024 image; panics on a tool error. Returns its time.
async fn call(peer: &Peer<RoleClient>, prompt: &str) -> Duration {
    let arguments = json!({"prompt": prompt, "size": format!("{SIDE}x{SIDE}")});
    let params = CallToolRequestParams::new("generate_image")
        .with_arguments(arguments.as_object().unwrap().clone());
    let start = Instant::now();
    let result = peer.call_tool(params).await.expect("tools/call");
    let took = start.elapsed();
    if result.is_error == Some(true) {
        panic!("generate_image failed: {:?}", result.structured_content);
    }
    took
}

/// `total` calls with `in_flight` of them outstanding at any time; returns the wall time.
async fn run_calls(peer: &Peer<RoleClient>, in_flight: usize, total: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (peer, next) = (peer.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    // Distinct prompts give distinct file names, as distinct images would.
                    call(&peer, &format!("a lighthouse at dusk {i}")).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("call task");
    }
    start.elapsed()
}

/// Times `n` sequential calls, in milliseconds, sorted.
async fn sequential_ms(peer: &Peer<RoleClient>, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        times.push(ms(call(peer, &format!("a lighthouse at dusk {i}")).await));
    }
    sorted(times)
}

// ---------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
    /// No target: shown for information.
    None,
}

/// One line of the result table.
#[derive(Debug, Clone)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: Target,
    /// How it was measured, in a few words.
    note: String,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, unit: &'static str, target: Target) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            target,
            note: String::new(),
        }
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// `Some(true)` for PASS, `Some(false)` for MISS, `None` without a target.
    fn pass(&self) -> Option<bool> {
        match self.target {
            Target::AtMost(t) => Some(self.value <= t),
            Target::AtLeast(t) => Some(self.value >= t),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::AtMost(t) => format!("≤ {} {}", num(t), self.unit),
            Target::AtLeast(t) => format!("≥ {} {}", num(t), self.unit),
            Target::None => "—".into(),
        }
    }

    fn json(&self) -> Value {
        let (op, target) = match self.target {
            Target::AtMost(t) => (Some("<="), Some(t)),
            Target::AtLeast(t) => (Some(">="), Some(t)),
            Target::None => (None, None),
        };
        json!({"name": self.name, "value": finite(self.value), "unit": self.unit, "target_op": op,
            "target": target, "pass": self.pass(), "note": self.note})
    }
}

/// A number with sensible precision for the table.
fn num(v: f64) -> String {
    match v.abs() {
        a if !a.is_finite() => "n/a".into(),
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// `v` for JSON (`null` when not a number).
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU model, cores, kernel and memory of this machine.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024);
    json!({"cpu": cpu, "cores": cores, "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "memory_mib": mem_mib, "loadavg": read("/proc/loadavg").trim(), "os": std::env::consts::OS, "arch": std::env::consts::ARCH})
}

/// Logs a phase on stderr.
fn phase(text: &str) {
    eprintln!("[e2e] {text}");
}

// ---------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------

/// The same HTTP call the server makes, straight from this process: what the upstream costs.
async fn baseline_ms(up: &Upstream, key: &str) -> Vec<f64> {
    let http = reqwest::Client::new();
    let url = format!("{}/images/generations", up.base_url);
    let body = json!({"model": "gpt-image-1.5", "prompt": "a lighthouse at dusk", "n": 1,
        "size": format!("{SIDE}x{SIDE}")});
    let mut times = Vec::new();
    for i in 0..BASELINE_CALLS + 3 {
        let start = Instant::now();
        let resp = http
            .post(&url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "baseline: {}", resp.status());
        let bytes = resp.bytes().await.unwrap();
        let took = start.elapsed();
        assert!(bytes.len() > 1_000_000);
        // The first calls open the connection: not counted, as for the server.
        if i >= 3 {
            times.push(ms(took));
        }
    }
    sorted(times)
}

/// Latency of sequential calls in one delivery mode, after a few warm-up calls.
async fn latency_ms(provider: &Provider, delivery: &str) -> Vec<f64> {
    let server = Server::start(provider, delivery).await;
    let peer = server.peer();
    sequential_ms(&peer, 3).await;
    let times = sequential_ms(&peer, LATENCY_CALLS).await;
    server.stop().await;
    times
}

/// What one throughput run saw.
struct Throughput {
    /// Calls per second.
    rate: f64,
    /// The most requests the upstream had in hand at once.
    upstream_peak: usize,
    /// The server's CPU time per call, ms.
    server_cpu: f64,
    /// This process's CPU time per call (fake upstream and MCP client), ms.
    harness_cpu: f64,
    /// The server's peak RSS, and its RSS a second after the run, MiB.
    peak: f64,
    after: f64,
}

/// `n` calls with `in_flight` outstanding on one connection to a fresh server.
async fn throughput(
    up: &Upstream,
    provider: &Provider,
    delivery: &str,
    in_flight: usize,
    n: usize,
) -> Throughput {
    let server = Server::start(provider, delivery).await;
    let peer = server.peer();
    // One round first: the connections to the upstream are opened once, as in a long session.
    run_calls(&peer, in_flight, in_flight).await;
    let (server_cpu, harness_cpu) = (server.cpu_ms(), cpu_ms("/proc/self/stat"));
    up.take_peak();
    let took = run_calls(&peer, in_flight, n).await;
    let server_cpu = (server.cpu_ms() - server_cpu) / n as f64;
    let harness_cpu = (cpu_ms("/proc/self/stat") - harness_cpu) / n as f64;
    let upstream_peak = up.take_peak();
    let (peak, _) = server.memory();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, after) = server.memory();
    server.stop().await;
    Throughput {
        rate: n as f64 / took.as_secs_f64(),
        upstream_peak,
        server_cpu,
        harness_cpu,
        peak,
        after,
    }
}

/// Writes `text` to `path` the way editors and secret managers do: a new file renamed over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Milliseconds from writing a new key into the config file to the upstream seeing it, per
/// rotation (`NaN` when it did not arrive within 5 s).
async fn reload_ms(up: &Upstream) -> Vec<f64> {
    let key = |i: usize| format!("sk-bench-reload-{i:04}-0123456789abcdef");
    let mut provider = Provider::OpenAi {
        base_url: up.base_url.clone(),
        key: key(0),
    };
    let server = Server::start(&provider, "link").await;
    let peer = server.peer();
    let out = server.home.path().join("images");
    call(&peer, "warm-up").await;
    let mut times = Vec::new();
    for i in 1..=RELOADS {
        // Let the previous change settle (its debounce and reload) before the next one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let new_key = key(i);
        provider = Provider::OpenAi {
            base_url: up.base_url.clone(),
            key: new_key.clone(),
        };
        let written = Instant::now();
        replace_file(&server.config, &config_toml(&provider, "link", &out));
        let deadline = written + Duration::from_secs(5);
        let seen = loop {
            call(&peer, "reload probe").await;
            if let Some(seen) = up.first_seen(&new_key) {
                break ms(seen - written);
            }
            if Instant::now() > deadline {
                break f64::NAN;
            }
        };
        times.push(seen);
    }
    server.stop().await;
    times
}

/// Images per second drawn by the mock provider in this process, and the mean PNG size.
async fn mock_in_process() -> (f64, usize) {
    let provider = MockProvider::new(MockSettings::default());
    let mut bytes = 0;
    let start = Instant::now();
    for i in 0..MOCK_CALLS {
        let mut request = GenerateRequest::new(format!("a lighthouse at dusk {i}"), MOCK_MODEL);
        request.options.size = Some(format!("{SIDE}x{SIDE}"));
        let result = provider.generate(&request).await.expect("mock generates");
        bytes += result.images[0].bytes.len();
    }
    (
        MOCK_CALLS as f64 / start.elapsed().as_secs_f64(),
        bytes / MOCK_CALLS,
    )
}

// ---------------------------------------------------------------------------------------
// The per-call breakdown: a bare fake that times its own writes
// ---------------------------------------------------------------------------------------

/// Upstream delay of the per-call breakdown: long enough that every reader is idle, waiting
/// for the answer, when its first byte goes out (as with a real model).
const BREAKDOWN_DELAY: Duration = Duration::from_millis(50);
/// Calls timed per reader in the per-call breakdown, after [`BREAKDOWN_WARMUP`].
const BREAKDOWN_CALLS: usize = 60;
/// Calls per reader not counted: they open connections and fill caches.
const BREAKDOWN_WARMUP: usize = 3;

/// One request as the bare fake saw it, on this process's clock.
#[derive(Debug, Clone)]
struct Exchange {
    /// The request's `prompt`, which ties it to the client's call.
    prompt: String,
    /// The last byte of the request arrived.
    arrived: Instant,
    /// The first byte of the answer was handed to the kernel.
    first: Instant,
    /// The last byte of the answer was handed to the kernel.
    last: Instant,
}

/// A bare HTTP/1.1 fake of `POST /v1/images/generations` for the per-call breakdown. It
/// writes the answer itself, with one `write_all` of a precomputed response, so it knows when
/// the answer's first and last bytes left it; axum's fake cannot say when hyper wrote them.
struct RawUpstream {
    /// `http://127.0.0.1:PORT/v1`.
    base_url: String,
    /// Status line, headers and body of every answer.
    response: Bytes,
    /// Every request seen, in order.
    seen: Mutex<Vec<Exchange>>,
}

impl RawUpstream {
    /// Serves `png` as the one image of every answer, after [`BREAKDOWN_DELAY`].
    async fn start(png: &[u8]) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let body = images_response(png);
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        let up = Arc::new(Self {
            base_url: format!("http://{}/v1", listener.local_addr().unwrap()),
            response: Bytes::from(response),
            seen: Mutex::new(Vec::new()),
        });
        let server = up.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(server.clone().serve(stream));
            }
        });
        up
    }

    /// Answers the requests of one connection until the peer closes it.
    async fn serve(self: Arc<Self>, mut stream: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            // The head, then as much body as it announces.
            let head_end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let arrived = Instant::now();
            let prompt = serde_json::from_slice::<Value>(&buf[head_end..head_end + length])
                .ok()
                .and_then(|v| v["prompt"].as_str().map(str::to_string))
                .unwrap_or_default();
            buf.drain(..head_end + length);
            tokio::time::sleep_until((arrived + BREAKDOWN_DELAY).into()).await;
            let first = Instant::now();
            if stream.write_all(&self.response).await.is_err() {
                return;
            }
            let last = Instant::now();
            self.seen.lock().unwrap().push(Exchange {
                prompt,
                arrived,
                first,
                last,
            });
        }
    }

    /// The request that carried `prompt`, once its answer is written.
    fn exchange(&self, prompt: &str) -> Option<Exchange> {
        let seen = self.seen.lock().unwrap();
        seen.iter().rev().find(|e| e.prompt == prompt).cloned()
    }

    /// `{"prompt": ...}` and the rest of a generation request, as the server sends it.
    fn request_body(prompt: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"model": "gpt-image-1.5", "prompt": prompt, "n": 1,
            "size": format!("{SIDE}x{SIDE}")}))
        .unwrap()
    }
}

/// The segments of one timed call, in milliseconds (`None` where the reader cannot see it).
#[derive(Debug, Clone, Copy, Default)]
struct Segments {
    /// The client's call → the last byte of the request at the upstream.
    request: Option<f64>,
    /// The upstream's first byte of the answer → its last byte.
    send: f64,
    /// The upstream's last byte → the client holds the result.
    after: Option<f64>,
}

/// The readers compared in the per-call breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reader {
    /// `curl -o /dev/null`, a new process and connection per call.
    Curl,
    /// A tokio `TcpStream` on a kept-alive connection, reading into one buffer of the
    /// announced size.
    Tcp,
    /// reqwest's `bytes()` on a kept-alive connection, as the latency baseline reads.
    Reqwest,
    /// reqwest's chunk stream, each chunk hashed with SHA-256 as it arrives (the provider's
    /// pattern, without the decode): what hashing on the read loop costs.
    HashInline,
    /// The same with the hashing on a thread of its own, fed chunk by chunk: what taking the
    /// hash off the read loop would save.
    HashThread,
    /// `OpenAiProvider::generate` in this process: reqwest, the streamed base64 decode and
    /// sha256, the JSON parse and the image probe.
    Provider,
    /// `generate_image` through the release binary in `link` mode, with rmcp's client.
    Mcp,
    /// The same through a second server whose environment adds `E2E_AB` (`K=V,K=V`): an A/B
    /// comparison of two settings, call by call under the same load.
    McpB,
}

impl Reader {
    const ALL: [Reader; 8] = [
        Reader::Curl,
        Reader::Tcp,
        Reader::Reqwest,
        Reader::HashInline,
        Reader::HashThread,
        Reader::Provider,
        Reader::Mcp,
        Reader::McpB,
    ];

    fn name(self) -> &'static str {
        match self {
            Reader::Curl => "curl",
            Reader::Tcp => "tokio TcpStream",
            Reader::Reqwest => "reqwest bytes()",
            Reader::HashInline => "reqwest stream + sha256 inline",
            Reader::HashThread => "reqwest stream + sha256 thread",
            Reader::Provider => "provider in process",
            Reader::Mcp => "MCP link",
            Reader::McpB => "MCP link, E2E_AB",
        }
    }
}

/// Everything the readers of the per-call breakdown need, set up once.
struct Readers {
    up: Arc<RawUpstream>,
    key: String,
    url: String,
    http: reqwest::Client,
    provider: OpenAiProvider,
    tcp: Option<tokio::net::TcpStream>,
    server: Server,
    /// The server of [`Reader::McpB`], when `E2E_AB` is set.
    server_b: Option<Server>,
    curl: bool,
}

impl Readers {
    async fn new(up: Arc<RawUpstream>, key: &str) -> Self {
        let provider = Provider::OpenAi {
            base_url: up.base_url.clone(),
            key: key.to_string(),
        };
        let settings =
            OpenAiSettings::new(up.base_url.parse().unwrap(), Some(key.to_string().into()));
        let curl = std::process::Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let ab: Vec<(String, String)> = std::env::var("E2E_AB")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let server_b = match ab.is_empty() {
            true => None,
            false => Some(Server::start_with(&provider, "link", &ab).await),
        };
        Self {
            server_b,
            url: format!("{}/images/generations", up.base_url),
            up,
            key: key.to_string(),
            http: reqwest::Client::new(),
            provider: OpenAiProvider::new(settings, reqwest::Client::new()),
            tcp: None,
            server: Server::start(&provider, "link").await,
            curl,
        }
    }

    /// One call by `reader` with `prompt`; `None` when this reader is not available here.
    async fn call(&mut self, reader: Reader, prompt: &str) -> Option<Segments> {
        let start = Instant::now();
        match reader {
            Reader::Curl => {
                if !self.curl {
                    return None;
                }
                let status = tokio::process::Command::new("curl")
                    .args(["-s", "-f", "-o", "/dev/null", "-H"])
                    .arg(format!("Authorization: Bearer {}", self.key))
                    .args(["-H", "Content-Type: application/json", "--data-binary"])
                    .arg(String::from_utf8(RawUpstream::request_body(prompt)).unwrap())
                    .arg(&self.url)
                    .status()
                    .await
                    .expect("curl runs");
                assert!(status.success(), "curl: {status}");
            }
            Reader::Tcp => self.tcp_call(prompt).await,
            Reader::Reqwest => {
                let resp = self
                    .http
                    .post(&self.url)
                    .bearer_auth(&self.key)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(RawUpstream::request_body(prompt))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "reqwest: {}", resp.status());
                assert!(resp.bytes().await.unwrap().len() > 1_000_000);
            }
            Reader::HashInline | Reader::HashThread => {
                use futures::StreamExt as _;
                use sha2::Digest as _;
                let resp = self
                    .http
                    .post(&self.url)
                    .bearer_auth(&self.key)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(RawUpstream::request_body(prompt))
                    .send()
                    .await
                    .unwrap();
                let mut stream = resp.bytes_stream();
                let digest = if reader == Reader::HashInline {
                    let mut hasher = sha2::Sha256::new();
                    while let Some(chunk) = stream.next().await {
                        hasher.update(chunk.unwrap());
                    }
                    hasher.finalize()
                } else {
                    let (tx, rx) = std::sync::mpsc::channel::<Bytes>();
                    let hashing = std::thread::spawn(move || {
                        let mut hasher = sha2::Sha256::new();
                        for chunk in rx {
                            hasher.update(&chunk);
                        }
                        hasher.finalize()
                    });
                    while let Some(chunk) = stream.next().await {
                        tx.send(chunk.unwrap()).unwrap();
                    }
                    drop(tx);
                    hashing.join().unwrap()
                };
                assert_eq!(digest.len(), 32);
            }
            Reader::Provider => {
                let mut request = GenerateRequest::new(prompt, "gpt-image-1.5");
                request.options.size = Some(format!("{SIDE}x{SIDE}"));
                let result = self.provider.generate(&request).await.expect("provider");
                assert_eq!(result.images.len(), 1);
            }
            Reader::Mcp => {
                call(&self.server.peer(), prompt).await;
            }
            Reader::McpB => {
                call(&self.server_b.as_ref()?.peer(), prompt).await;
            }
        }
        let done = Instant::now();
        let seen = self.up.exchange(prompt).expect("the fake saw the call");
        // A new process's start-up is not the reader's: curl's request segment is left out.
        let visible = reader != Reader::Curl;
        Some(Segments {
            request: visible.then(|| ms(seen.arrived - start)),
            send: ms(seen.last - seen.first),
            after: visible.then(|| ms(done.saturating_duration_since(seen.last))),
        })
    }

    /// A plain HTTP/1.1 exchange on a kept-alive `TcpStream`: what the transfer alone costs.
    async fn tcp_call(&mut self, prompt: &str) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        if self.tcp.is_none() {
            let addr = self.url.trim_start_matches("http://");
            let addr = &addr[..addr.find('/').unwrap()];
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            self.tcp = Some(stream);
        }
        let stream = self.tcp.as_mut().unwrap();
        let body = RawUpstream::request_body(prompt);
        let head = format!(
            "POST /v1/images/generations HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.key,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        // The answer is known in advance: read exactly its length into one buffer.
        let want = self.up.response.len();
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let n = stream.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "the fake closed the connection");
        }
        assert_eq!(&buf[..12], b"HTTP/1.1 200");
    }
}

/// Per-call segments of every reader, calls interleaved across readers so that load on the
/// machine falls on all of them alike.
async fn per_call_breakdown(png: &[u8], key: &str) -> Vec<(Reader, Vec<Segments>)> {
    let up = RawUpstream::start(png).await;
    let mut readers = Readers::new(up, key).await;
    let mut out: Vec<(Reader, Vec<Segments>)> =
        Reader::ALL.iter().map(|&r| (r, Vec::new())).collect();
    for i in 0..BREAKDOWN_WARMUP + BREAKDOWN_CALLS {
        for (reader, samples) in &mut out {
            let prompt = format!("a lighthouse at dusk {} {i}", reader.name());
            if let Some(segments) = readers.call(*reader, &prompt).await {
                if i >= BREAKDOWN_WARMUP {
                    samples.push(segments);
                }
            }
        }
    }
    readers.server.stop().await;
    if let Some(server) = readers.server_b {
        server.stop().await;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Over streamable HTTP, side by side with a peer
// ---------------------------------------------------------------------------------------

/// Sequential calls per server in the HTTP latency runs.
const HTTP_LATENCY_CALLS: usize = 100;
/// `(clients, calls measured)` of the HTTP throughput runs; each client has its own
/// connection (and session), as separate agents sharing one server would.
const HTTP_THROUGHPUT_RUNS: [(usize, usize); 3] = [(1, 12), (8, 96), (64, 768)];
/// The peer, from PyPI: a Python (FastMCP) server run by FastMCP's CLI over HTTP.
const PEER_PACKAGE: &str = "gpt-image-mcp";
const PEER_VERSION: &str = "0.1.1";
/// The peer's added latency per call measured with the official Python client (the issue's
/// figure), ms: the target's basis when the peer cannot be run here.
const PEER_ADDED_MS_REPORTED: f64 = 82.0;
/// How long the peer may take to import and listen (about 15 s on a busy 2-core machine).
const PEER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Which server an [`HttpTarget`] is: they take different arguments and answer differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpKind {
    /// `imagegen-mcp serve --http`, `link` delivery.
    Ours,
    /// `fastmcp run gpt_image_mcp/server.py:mcp --transport http`.
    Peer,
}

impl HttpKind {
    fn name(self) -> &'static str {
        match self {
            HttpKind::Ours => "imagegen-mcp",
            HttpKind::Peer => "gpt-image-mcp 0.1.1",
        }
    }

    /// `generate_image` arguments for a 1024x1024 picture (the peer sends gpt-image-1 no
    /// size: it asks for the model's default, 1024x1024).
    fn arguments(self, prompt: &str) -> serde_json::Map<String, Value> {
        let arguments = match self {
            HttpKind::Ours => json!({"prompt": prompt, "size": format!("{SIDE}x{SIDE}")}),
            HttpKind::Peer => json!({"prompt": prompt}),
        };
        arguments.as_object().unwrap().clone()
    }

    /// Why `result` is not a saved image, if it is not. The peer reports failures in its
    /// text (`"success": false`), not with `isError`.
    fn failure(self, result: &rmcp::model::CallToolResult) -> Option<String> {
        if result.is_error == Some(true) {
            return Some(format!("{:?}", result.content));
        }
        let ok = match self {
            HttpKind::Ours => result
                .structured_content
                .as_ref()
                .is_some_and(|s| s["images"][0]["path"].is_string()),
            HttpKind::Peer => result.content.iter().any(|c| {
                c.as_text()
                    .is_some_and(|t| t.text.contains("\"success\": true"))
            }),
        };
        (!ok).then(|| format!("{:?}", result.content))
    }
}

/// A server under test over streamable HTTP, as a child process.
struct HttpTarget {
    kind: HttpKind,
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT/mcp`.
    url: String,
    /// Config, images and the server's log.
    home: tempfile::TempDir,
}

/// The MCP client of the HTTP runs: rmcp's, speaking the revision it holds.
#[derive(Debug, Clone)]
struct VersionedClient(ProtocolVersion);

impl ClientHandler for VersionedClient {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = self.0.clone();
        info
    }
}

/// A client connection of the HTTP runs.
type HttpClient = RunningService<RoleClient, VersionedClient>;

impl HttpTarget {
    /// `imagegen-mcp serve --http 127.0.0.1:0` on `provider` in `link` mode; waits for the
    /// URL it logs.
    async fn ours(provider: &Provider) -> Self {
        let home = tempfile::tempdir().unwrap();
        let config_dir = home.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        let config = config_dir.join("imagegen.toml");
        let out = home.path().join("images");
        std::fs::write(&config, config_toml(provider, "link", &out)).unwrap();
        let log_path = home.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagegen-mcp"))
            .env_clear()
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_DATA_HOME", home.path().join(".local/share"))
            .current_dir(home.path())
            .arg("--config")
            .arg(&config)
            .args(["serve", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn imagegen-mcp");
        let pid = child.id().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(at) = text.find("url=http://") {
                let url = text[at + 4..].split_whitespace().next().unwrap_or("");
                break url.to_string();
            }
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                panic!("serve --http did not report its URL:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Self {
            kind: HttpKind::Ours,
            child,
            pid,
            url,
            home,
        }
    }

    /// The peer on a free loopback port, pointed at the fake upstream; waits until it
    /// answers `initialize`. `Err` says why it cannot run.
    async fn peer(
        fastmcp: &Path,
        server_py: &Path,
        up: &Upstream,
        key: &str,
    ) -> Result<Self, String> {
        let home = tempfile::tempdir().unwrap();
        // A port the kernel just handed out and took back: free unless something grabs it
        // in the next instant.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log_path = home.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(fastmcp)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home.path())
            // Its images go to $TMPDIR/gpt-image-mcp: inside the run's directory.
            .env("TMPDIR", home.path())
            .env("OPENAI_BASE_URL", &up.base_url)
            .env("OPENAI_API_KEY", key)
            // It shapes requests by model name; the fake answers any, as a compatible server
            // serving gpt-image-1 would.
            .env("IMAGE_MODEL", "gpt-image-1")
            .current_dir(home.path())
            .arg("run")
            .arg(format!("{}:mcp", server_py.display()))
            .args(["--transport", "http", "--host", "127.0.0.1", "--no-banner"])
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", fastmcp.display()))?;
        let pid = child.id().unwrap_or(0);
        let url = format!("http://127.0.0.1:{port}/mcp");
        let deadline = Instant::now() + PEER_START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the peer exited ({status}) before listening:\n{}",
                    log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the peer did not listen within {PEER_START_TIMEOUT:?}:\n{}",
                    log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            kind: HttpKind::Peer,
            child,
            pid,
            url,
            home,
        })
    }

    /// A new client connection speaking `version` (its own reqwest client; a session with
    /// 2025-11-25).
    async fn connect(&self, version: ProtocolVersion) -> Result<HttpClient, String> {
        let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                self.url.as_str(),
            ),
        );
        VersionedClient(version)
            .serve(transport)
            .await
            .map_err(|e| format!("{}: MCP over HTTP does not connect: {e}", self.kind.name()))
    }

    /// The server's log so far.
    fn log(&self) -> String {
        server_log(self.home.path())
    }

    /// Peak RSS (VmHWM) of the server and every process it started, MiB.
    fn peak_rss(&self) -> f64 {
        process_tree(self.pid)
            .iter()
            .map(|pid| {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                    .map_or(0.0, |kb| kb / 1024.0)
            })
            .sum()
    }

    /// CPU time of the server and every process it started, ms.
    fn cpu_ms(&self) -> f64 {
        process_tree(self.pid)
            .iter()
            .map(|pid| cpu_ms(&format!("/proc/{pid}/stat")))
            .filter(|v| v.is_finite())
            .sum()
    }

    /// Stops the server: SIGTERM for ours (it drains and exits 0), a kill for the peer.
    async fn stop(mut self) {
        if self.kind == HttpKind::Ours {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let wait = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
            if matches!(wait, Ok(Ok(status)) if status.success()) {
                return;
            }
            eprintln!("warning: serve --http did not exit 0 after SIGTERM; killing it");
        }
        let _ = self.child.kill().await;
    }
}

/// `pid` and its descendants, from `/proc/PID/task/*/children`.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i]));
        for task in tasks.into_iter().flatten().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// One `generate_image` call over `client`; its time, or why it failed.
async fn http_call(client: &HttpClient, kind: HttpKind, prompt: &str) -> Result<Duration, String> {
    let params =
        CallToolRequestParams::new("generate_image").with_arguments(kind.arguments(prompt));
    let start = Instant::now();
    let result = client
        .call_tool(params)
        .await
        .map_err(|e| format!("{}: tools/call: {e}", kind.name()))?;
    let took = start.elapsed();
    match kind.failure(&result) {
        Some(why) => Err(format!("{}: generate_image failed: {why}", kind.name())),
        None => Ok(took),
    }
}

/// `total` calls spread over `clients`, each client making one call at a time; the wall
/// time and each call's time in ms, sorted.
async fn http_run(
    clients: &[Arc<HttpClient>],
    kind: HttpKind,
    total: usize,
) -> Result<(Duration, Vec<f64>), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return Ok::<_, String>(times);
                    }
                    let took =
                        http_call(&client, kind, &format!("a lighthouse at dusk {i}")).await?;
                    times.push(ms(took));
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(total);
    for worker in workers {
        times.extend(worker.await.map_err(|e| format!("call task: {e}"))??);
    }
    Ok((start.elapsed(), sorted(times)))
}

/// One throughput run over HTTP.
struct HttpRun {
    clients: usize,
    /// The upstream's spread around its mean delay, percent (0: lockstep).
    jitter: u64,
    /// Calls per second.
    rate: f64,
    /// Each call's time, ms, sorted.
    times: Vec<f64>,
    /// The server's CPU time per call, ms.
    cpu: f64,
}

/// What one server showed over HTTP.
struct HttpFigures {
    /// Sequential calls, 2025-11-25 session, ms, sorted.
    latency: Vec<f64>,
    /// Sequential calls, 2026-07-28 stateless requests, ms, sorted (this server only: the
    /// peer serves 2025-11-25 alone).
    stateless: Option<Vec<f64>>,
    runs: Vec<HttpRun>,
    /// VmHWM after every run, MiB.
    peak_rss: f64,
}

/// The latency and throughput runs against `target`.
async fn http_figures(
    up: &Upstream,
    png: &[u8],
    target: &HttpTarget,
) -> Result<HttpFigures, String> {
    let kind = target.kind;
    let name = kind.name();
    up.answer(LATENCY_DELAY, png);
    let client = Arc::new(target.connect(ProtocolVersion::V_2025_11_25).await?);
    // The first calls open connections and (for the peer) finish its imports.
    for i in 0..3 {
        http_call(&client, kind, &format!("warm-up {i}")).await?;
    }
    phase(&format!(
        "http: {HTTP_LATENCY_CALLS} sequential calls, {name}"
    ));
    let (_, latency) = http_run(std::slice::from_ref(&client), kind, HTTP_LATENCY_CALLS).await?;
    let stateless = match kind {
        HttpKind::Peer => None,
        HttpKind::Ours => {
            phase(&format!(
                "http: {HTTP_LATENCY_CALLS} sequential calls, {name}, 2026-07-28"
            ));
            let stateless = Arc::new(target.connect(ProtocolVersion::V_2026_07_28).await?);
            http_run(std::slice::from_ref(&stateless), kind, 3).await?;
            let (_, times) =
                http_run(std::slice::from_ref(&stateless), kind, HTTP_LATENCY_CALLS).await?;
            Some(times)
        }
    };
    // Upstream times that vary, as a real model's do; and for this server also lockstep
    // (every answer of a round in the same millisecond), the worst case.
    let mut runs: Vec<(usize, usize, u64)> = HTTP_THROUGHPUT_RUNS
        .iter()
        .map(|&(k, n)| (k, n, JITTER_PCT))
        .collect();
    if kind == HttpKind::Ours {
        runs.push((64, 768, 0));
    }
    let mut clients = vec![client];
    let mut measured = Vec::new();
    for (k, n, jitter) in runs {
        phase(&format!(
            "http: {n} calls from {k} clients, upstream ±{jitter}%, {name}"
        ));
        up.answer(THROUGHPUT_DELAY, png);
        up.jitter(jitter);
        while clients.len() < k {
            clients.push(Arc::new(
                target.connect(ProtocolVersion::V_2025_11_25).await?,
            ));
        }
        let active = &clients[..k];
        // One round first: every client's connection is open, as in a long session.
        http_run(active, kind, k).await?;
        let cpu = target.cpu_ms();
        let (took, times) = http_run(active, kind, n).await?;
        measured.push(HttpRun {
            clients: k,
            jitter,
            rate: n as f64 / took.as_secs_f64(),
            times,
            cpu: (target.cpu_ms() - cpu) / n as f64,
        });
    }
    up.jitter(0);
    let peak_rss = target.peak_rss();
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            let _ = client.cancel().await;
        }
    }
    Ok(HttpFigures {
        latency,
        stateless,
        runs: measured,
        peak_rss,
    })
}

/// The peer installed into a virtualenv in the target directory (once; later runs reuse
/// it): the paths of its `fastmcp` command and its `server.py`, or why it cannot be had.
fn install_peer() -> Result<(PathBuf, PathBuf), String> {
    let venv = target_dir().join("bench-peer-venv");
    let python = venv.join("bin/python");
    let run = |cmd: &mut std::process::Command| -> Result<String, String> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if !python.exists() {
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    let version = run(std::process::Command::new(&python).args([
        "-c",
        &format!("import importlib.metadata as m; print(m.version({PEER_PACKAGE:?}))"),
    ]));
    if version.as_deref() != Ok(PEER_VERSION) {
        phase(&format!(
            "http: installing {PEER_PACKAGE}=={PEER_VERSION} into {}",
            venv.display()
        ));
        run(std::process::Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("{PEER_PACKAGE}=={PEER_VERSION}"),
        ]))?;
    }
    // The package's directory, found without importing it (its import reads settings).
    let package = run(std::process::Command::new(&python).args([
        "-c",
        "import importlib.util as u; print(u.find_spec('gpt_image_mcp').submodule_search_locations[0])",
    ]))?;
    let server_py = Path::new(&package).join("server.py");
    let fastmcp = venv.join("bin/fastmcp");
    for path in [&server_py, &fastmcp] {
        if !path.exists() {
            return Err(format!("{} is missing after the install", path.display()));
        }
    }
    Ok((fastmcp, server_py))
}

/// The last `max` bytes of `text` (on a character boundary), for error messages.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ---------------------------------------------------------------------------------------
// Phases, as table rows
// ---------------------------------------------------------------------------------------

/// What every phase shares: the fake upstream, the payloads, and a provider pointing at it.
struct Bench {
    up: Arc<Upstream>,
    /// The ~1.5 MB picture.
    png: Vec<u8>,
    /// A 64x64 picture, for the reload probes.
    small_png: Vec<u8>,
    /// The fake upstream with the everyday key.
    openai: Provider,
    /// The everyday key.
    key: String,
    figures: Vec<Figure>,
    raw: serde_json::Map<String, Value>,
}

impl Bench {
    /// Added latency per call in `link` and `preview` modes, against the direct HTTP call.
    async fn latency(&mut self) {
        self.up.answer(LATENCY_DELAY, &self.png);
        phase(&format!("baseline: {BASELINE_CALLS} direct HTTP calls"));
        let direct = baseline_ms(&self.up, &self.key).await;
        let delay_ms = ms(LATENCY_DELAY);
        let (direct50, direct99) = (pct(&direct, 0.5), pct(&direct, 0.99));
        self.figures.push(
            Figure::new("direct HTTP call p50", direct50, "ms", Target::None).note(format!(
                "reqwest from the bench; upstream delay {delay_ms:.0} ms"
            )),
        );
        self.figures.push(Figure::new(
            "direct HTTP call p99",
            direct99,
            "ms",
            Target::None,
        ));
        self.raw.insert("direct_ms".into(), json!(direct));
        for (mode, p50_target) in [("link", 3.0), ("preview", 15.0)] {
            phase(&format!(
                "latency: {LATENCY_CALLS} sequential calls, {mode} mode"
            ));
            let times = latency_ms(&self.openai, mode).await;
            let (p50, p99) = (pct(&times, 0.5), pct(&times, 0.99));
            self.figures.push(
                Figure::new(format!("MCP call p50 ({mode})"), p50, "ms", Target::None)
                    .note("client-observed, over stdio"),
            );
            self.figures.push(Figure::new(
                format!("MCP call p99 ({mode})"),
                p99,
                "ms",
                Target::None,
            ));
            let over = |v: f64| format!("{:.1} ms over the configured delay", v - delay_ms);
            self.figures.push(
                Figure::new(
                    format!("added latency p50 ({mode})"),
                    p50 - direct50,
                    "ms",
                    Target::AtMost(p50_target),
                )
                .note(format!("MCP p50 − direct p50; {}", over(p50))),
            );
            self.figures.push(
                Figure::new(
                    format!("added latency p99 ({mode})"),
                    p99 - direct99,
                    "ms",
                    Target::None,
                )
                .note(format!("MCP p99 − direct p99; {}", over(p99))),
            );
            self.raw.insert(format!("mcp_{mode}_ms"), json!(times));
        }
    }

    /// Calls per second with 1, 8 and 64 in flight on one connection, and peak memory.
    async fn throughput(&mut self) {
        self.up.answer(THROUGHPUT_DELAY, &self.png);
        // Lockstep first (every answer of a round lands in the same millisecond: the worst
        // case), then with upstream times that vary, as a real model's do.
        let runs = THROUGHPUT_RUNS
            .iter()
            .map(|&(k, n)| (k, n, "link", 0))
            .chain([
                (64, 768, "preview", 0),
                (64, 768, "link", JITTER_PCT),
                (64, 768, "preview", JITTER_PCT),
            ]);
        for (in_flight, n, mode, jitter) in runs {
            let how = match jitter {
                0 => mode.to_string(),
                pct => format!("{mode}, upstream ±{pct}%"),
            };
            phase(&format!(
                "throughput: {n} calls, {in_flight} in flight, {how}"
            ));
            self.up.jitter(jitter);
            let run = throughput(&self.up, &self.openai, mode, in_flight, n).await;
            let ideal = in_flight as f64 / THROUGHPUT_DELAY.as_secs_f64();
            self.figures.push(
                Figure::new(
                    format!("throughput, {in_flight} in flight ({how})"),
                    run.rate,
                    "calls/s",
                    Target::AtLeast(0.9 * ideal),
                )
                .note(format!(
                    "upstream-bound ideal {ideal:.0} calls/s, {:.0}% of it (target 90%); \
                     upstream saw ≤ {} at once; CPU per call: server {:.1} ms, bench {:.1} ms",
                    100.0 * run.rate / ideal,
                    run.upstream_peak,
                    run.server_cpu,
                    run.harness_cpu
                )),
            );
            if in_flight == 64 {
                self.figures.push(
                    Figure::new(
                        format!("peak RSS, 64 in flight ({how})"),
                        run.peak,
                        "MiB",
                        Target::AtMost(200.0),
                    )
                    .note(format!(
                        "VmHWM of the server after the run; VmRSS 1 s later {:.0} MiB",
                        run.after
                    )),
                );
            }
        }
    }

    /// Start-up time, and memory at rest.
    async fn startup(&mut self) {
        self.up.answer(LATENCY_DELAY, &self.png);
        phase(&format!("start-up: {STARTS} starts"));
        let mut starts = Vec::new();
        for _ in 0..STARTS {
            let server = Server::start(&self.openai, "preview").await;
            starts.push(ms(server.started_in));
            server.stop().await;
        }
        let starts = sorted(starts);
        self.figures.push(
            Figure::new(
                "start-up p50",
                pct(&starts, 0.5),
                "ms",
                Target::AtMost(50.0),
            )
            .note("spawn → initialize → first tools/list answer"),
        );
        self.figures.push(Figure::new(
            "start-up max",
            pct(&starts, 1.0),
            "ms",
            Target::None,
        ));
        self.raw.insert("startup_ms".into(), json!(starts));

        let server = Server::start(&self.openai, "preview").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (peak, rss) = server.memory();
        server.stop().await;
        self.figures.push(
            Figure::new("peak RSS idle", peak, "MiB", Target::AtMost(20.0))
                .note("VmHWM 1 s after start-up and tools/list"),
        );
        self.figures
            .push(Figure::new("RSS idle", rss, "MiB", Target::None).note("VmRSS"));
    }

    /// A new key written into the config file, until the upstream sees it.
    async fn reload(&mut self) {
        phase(&format!("reload: {RELOADS} key rotations"));
        self.up.answer(RELOAD_DELAY, &self.small_png);
        let reloads = sorted(reload_ms(&self.up).await);
        self.figures.push(
            Figure::new(
                "reload p50",
                pct(&reloads, 0.5),
                "ms",
                Target::AtMost(1000.0),
            )
            .note("file written → upstream sees the new key (debounce 300 ms)"),
        );
        self.figures.push(Figure::new(
            "reload max",
            pct(&reloads, 1.0),
            "ms",
            Target::AtMost(1000.0),
        ));
        let reloads: Vec<_> = reloads.into_iter().map(finite).collect();
        self.raw.insert("reload_ms".into(), json!(reloads));
    }

    /// Where a call's time goes: the server's own steps, run in this process on the same
    /// payload (no targets; this explains the latency figures).
    async fn breakdown(&mut self) {
        phase(&format!(
            "breakdown: {BREAKDOWN_CALLS} calls per reader, interleaved, against a bare fake"
        ));
        self.per_call().await;
        phase("breakdown: the server's steps, in process");
        self.up.answer(Duration::ZERO, &self.png);
        const N: usize = 30;
        let settings = OpenAiSettings::new(
            self.up.base_url.parse().unwrap(),
            Some(self.key.clone().into()),
        );
        let provider = OpenAiProvider::new(settings, reqwest::Client::new());
        let mut request = GenerateRequest::new("a lighthouse at dusk", "gpt-image-1.5");
        request.options.size = Some(format!("{SIDE}x{SIDE}"));
        let http = reqwest::Client::new();
        let url = format!("{}/images/generations", self.up.base_url);
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let provenance = Provenance {
            prompt: "a lighthouse at dusk".into(),
            tool: Some("generate_image".into()),
            ..Provenance::default()
        };
        let (mut direct, mut call, mut save, mut preview) = (vec![], vec![], vec![], vec![]);
        let mut shown = String::new();
        for i in 0..N + 2 {
            let start = Instant::now();
            let body = http.post(&url).bearer_auth(&self.key).json(&json!({}));
            body.send().await.unwrap().bytes().await.unwrap();
            let t_direct = ms(start.elapsed());
            let start = Instant::now();
            let result = provider.generate(&request).await.expect("provider call");
            let t_call = ms(start.elapsed());
            let image = &result.images[0];
            let start = Instant::now();
            store.save(image, &provenance).await.unwrap();
            let t_save = ms(start.elapsed());
            let start = Instant::now();
            let inline = imagegen_mcp::delivery::preview(image, 80_000).unwrap();
            let t_preview = ms(start.elapsed());
            shown = format!(
                "{}x{} {}, {} KB of base64",
                inline.width,
                inline.height,
                inline.mime,
                inline.base64.len() / 1000
            );
            if i >= 2 {
                direct.push(t_direct);
                call.push(t_call);
                save.push(t_save);
                preview.push(t_preview);
            }
        }
        let p50 = |v: Vec<f64>| pct(&sorted(v), 0.5);
        let (direct, call) = (p50(direct), p50(call));
        let rows = [
            (
                "provider call − direct HTTP",
                call - direct,
                "OpenAiProvider::generate: base64 decode and sha256 as the body arrives, JSON parse, probe",
            ),
            (
                "save",
                p50(save),
                "Store::save: the image, then its JSON sidecar, through object_store's LocalFileSystem (sha256 came with the image; fdatasync runs in the background)",
            ),
            (
                "preview",
                p50(preview),
                &format!("delivery::preview: PNG decode, SIMD resize, SIMD JPEG encode → {shown}"),
            ),
        ];
        for (name, value, note) in rows {
            self.figures.push(
                Figure::new(
                    format!("{name} p50 (in process)"),
                    value,
                    "ms",
                    Target::None,
                )
                .note(note),
            );
        }
    }

    /// Where one call's time goes, on one clock: the client's send, the upstream's receipt,
    /// the first and last byte of its answer, the client holding the result. The same answer
    /// is read by curl, a bare `TcpStream` and reqwest for the transfer alone.
    async fn per_call(&mut self) {
        let runs = per_call_breakdown(&self.png, &self.key).await;
        let p = |v: &[f64], q: f64| pct(&sorted(v.to_vec()), q);
        let mut totals = HashMap::new();
        let mut raw = serde_json::Map::new();
        for (reader, samples) in &runs {
            if samples.is_empty() {
                continue;
            }
            let name = reader.name();
            let send: Vec<f64> = samples.iter().map(|s| s.send).collect();
            let request: Vec<f64> = samples.iter().filter_map(|s| s.request).collect();
            let after: Vec<f64> = samples.iter().filter_map(|s| s.after).collect();
            let segments = [
                ("call → request at upstream", &request),
                ("upstream send, first → last byte", &send),
                ("upstream last byte → result held", &after),
            ];
            for (segment, values) in segments {
                if values.is_empty() {
                    continue;
                }
                self.figures.push(
                    Figure::new(
                        format!("{segment} p50 ({name})"),
                        p(values, 0.5),
                        "ms",
                        Target::None,
                    )
                    .note(format!("p90 {} ms", num(p(values, 0.9)))),
                );
            }
            if request.len() == samples.len() && after.len() == samples.len() {
                let sum: Vec<f64> = samples
                    .iter()
                    .map(|s| s.request.unwrap_or(0.0) + s.send + s.after.unwrap_or(0.0))
                    .collect();
                totals.insert(*reader, p(&sum, 0.5));
            }
            raw.insert(
                name.into(),
                json!({"request_ms": request, "send_ms": send, "after_ms": after}),
            );
        }
        if let (Some(mcp), Some(tcp)) = (totals.get(&Reader::Mcp), totals.get(&Reader::Tcp)) {
            self.figures.push(
                Figure::new(
                    "MCP link − bare TcpStream p50 (call time less the upstream delay)",
                    mcp - tcp,
                    "ms",
                    Target::None,
                )
                .note(format!(
                    "request + send + after: MCP {} ms, TcpStream {} ms",
                    num(*mcp),
                    num(*tcp)
                )),
            );
        }
        self.raw
            .insert("per_call_breakdown".into(), Value::Object(raw));
    }

    /// Over streamable HTTP: added latency, throughput with 1, 8 and 64 clients and peak
    /// memory, for this server and the peer side by side, with one client (rmcp's) for both.
    async fn http(&mut self) {
        self.up.answer(LATENCY_DELAY, &self.png);
        phase(&format!(
            "http: baseline, {BASELINE_CALLS} direct HTTP calls"
        ));
        let direct = baseline_ms(&self.up, &self.key).await;
        let direct50 = pct(&direct, 0.5);
        // The fake's delay is exact (from the request's arrival), so a direct call at another
        // delay takes that much longer and no more.
        let direct_at = |delay: Duration| direct50 + ms(delay) - ms(LATENCY_DELAY);
        self.raw.insert("http_direct_ms".into(), json!(direct));

        let peer = tokio::task::spawn_blocking(install_peer)
            .await
            .unwrap_or_else(|e| Err(format!("install task: {e}")));
        let mut measured = Vec::new();
        let ours = HttpTarget::ours(&self.openai).await;
        let figures = http_figures(&self.up, &self.png, &ours).await;
        if let Err(e) = &figures {
            panic!("{e}\n{}", ours.log());
        }
        ours.stop().await;
        measured.push((HttpKind::Ours, figures.unwrap()));
        let missing = match peer {
            Err(why) => Some(format!("not installed: {why}")),
            Ok((fastmcp, server_py)) => {
                phase(&format!("http: starting {}", HttpKind::Peer.name()));
                match HttpTarget::peer(&fastmcp, &server_py, &self.up, &self.key).await {
                    Err(why) => Some(why),
                    Ok(target) => {
                        let figures = http_figures(&self.up, &self.png, &target).await;
                        let log = target.log();
                        target.stop().await;
                        match figures {
                            Ok(figures) => {
                                measured.push((HttpKind::Peer, figures));
                                None
                            }
                            Err(why) => Some(format!("{why}\n{}", tail(&log, 2000))),
                        }
                    }
                }
            }
        };
        if let Some(why) = &missing {
            eprintln!("[e2e] http: the peer is missing from this run: {why}");
            self.raw.insert("http_peer_missing".into(), json!(why));
        }

        let added50 = |f: &HttpFigures| pct(&f.latency, 0.5) - direct50;
        let peer_added = measured
            .iter()
            .find(|(k, _)| *k == HttpKind::Peer)
            .map(|(_, f)| added50(f));
        let (basis, basis_note) = match peer_added {
            Some(v) => (v, format!("the peer's {} ms in this run", num(v))),
            None => (
                PEER_ADDED_MS_REPORTED,
                format!(
                    "the peer's {PEER_ADDED_MS_REPORTED} ms reported in the issue (peer not run)"
                ),
            ),
        };
        for (kind, f) in &measured {
            let name = kind.name();
            let ours = *kind == HttpKind::Ours;
            let (p50, p99) = (pct(&f.latency, 0.5), pct(&f.latency, 0.99));
            self.figures.push(
                Figure::new(
                    format!("HTTP added latency p50 ({name})"),
                    p50 - direct50,
                    "ms",
                    if ours { Target::AtMost(basis / 30.0) } else { Target::None },
                )
                .note(match ours {
                    true => format!(
                        "MCP call over HTTP p50 {} ms − direct p50 {} ms; target: 1/30 of {basis_note}",
                        num(p50),
                        num(direct50)
                    ),
                    false => format!(
                        "MCP call over HTTP p50 {} ms − direct p50 {} ms; {HTTP_LATENCY_CALLS} sequential calls",
                        num(p50),
                        num(direct50)
                    ),
                }),
            );
            self.figures.push(
                Figure::new(
                    format!("HTTP added latency p99 ({name})"),
                    p99 - pct(&direct, 0.99),
                    "ms",
                    Target::None,
                )
                .note(format!("MCP p99 {} ms − direct p99", num(p99))),
            );
            for run in &f.runs {
                let ideal = run.clients as f64 / THROUGHPUT_DELAY.as_secs_f64();
                let (how, calls) = match run.jitter {
                    // In lockstep every upstream answer takes the same time: the rest is added.
                    0 => {
                        let base = direct_at(THROUGHPUT_DELAY);
                        (
                            "lockstep".to_string(),
                            format!(
                                "added latency p50 {} ms, p99 {} ms",
                                num(pct(&run.times, 0.5) - base),
                                num(pct(&run.times, 0.99) - base)
                            ),
                        )
                    }
                    spread => (
                        format!("upstream ±{spread}%"),
                        format!(
                            "call p50 {} ms, p99 {} ms (upstream {}–{} ms)",
                            num(pct(&run.times, 0.5)),
                            num(pct(&run.times, 0.99)),
                            ms(THROUGHPUT_DELAY) as u64 * (100 - spread) / 100,
                            ms(THROUGHPUT_DELAY) as u64 * (100 + spread) / 100
                        ),
                    ),
                };
                let target = match (ours, run.clients, run.jitter) {
                    (true, 64, j) if j > 0 => Target::AtLeast(0.9 * ideal),
                    _ => Target::None,
                };
                self.figures.push(
                    Figure::new(
                        format!("HTTP throughput, {} clients, {how} ({name})", run.clients),
                        run.rate,
                        "calls/s",
                        target,
                    )
                    .note(format!(
                        "ideal {ideal:.0} calls/s ({:.0}%); {calls}; server CPU {:.1} ms per call",
                        100.0 * run.rate / ideal,
                        run.cpu
                    )),
                );
            }
            if let Some(stateless) = &f.stateless {
                self.figures.push(
                    Figure::new(
                        format!("HTTP added latency p50, 2026-07-28 stateless ({name})"),
                        pct(stateless, 0.5) - direct50,
                        "ms",
                        Target::None,
                    )
                    .note(format!(
                        "the same {HTTP_LATENCY_CALLS} calls without a session; p99 {} ms",
                        num(pct(stateless, 0.99) - pct(&direct, 0.99))
                    )),
                );
            }
            self.figures.push(
                Figure::new(
                    format!("HTTP peak RSS ({name})"),
                    f.peak_rss,
                    "MiB",
                    if ours {
                        Target::AtMost(200.0)
                    } else {
                        Target::None
                    },
                )
                .note("VmHWM of the server process (and its children) after every HTTP run"),
            );
            self.raw.insert(
                format!("http_{}", if ours { "ours" } else { "peer" }),
                json!({"latency_ms": f.latency, "stateless_latency_ms": f.stateless,
                    "runs": f.runs.iter().map(|r| json!({"clients": r.clients,
                        "upstream_jitter_pct": r.jitter, "calls_per_s": r.rate,
                        "call_ms": r.times, "server_cpu_ms_per_call": r.cpu}))
                        .collect::<Vec<_>>(),
                    "peak_rss_mib": f.peak_rss}),
            );
        }
    }

    /// The mock provider, through the binary and in process.
    async fn mock(&mut self) {
        phase(&format!(
            "mock: {MOCK_CALLS} images through the binary and in process"
        ));
        let server = Server::start(&Provider::Mock, "link").await;
        let peer = server.peer();
        run_calls(&peer, 2, 4).await;
        for in_flight in [1, 2] {
            let took = run_calls(&peer, in_flight, MOCK_CALLS).await;
            self.figures.push(
                Figure::new(
                    format!("mock via MCP, {in_flight} in flight"),
                    MOCK_CALLS as f64 / took.as_secs_f64(),
                    "images/s",
                    Target::None,
                )
                .note(format!("{SIDE}x{SIDE} PNG, link mode, saved to disk")),
            );
        }
        server.stop().await;
        let (rate, size) = mock_in_process().await;
        self.figures.push(
            Figure::new("mock in process", rate, "images/s", Target::None).note(format!(
                "MockProvider::generate, {SIDE}x{SIDE} PNG of {} KB",
                size / 1000
            )),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/// The phases, in the order they run; `cargo bench --bench e2e -- NAME...` runs only those.
const PHASES: [&str; 7] = [
    "latency",
    "breakdown",
    "throughput",
    "http",
    "startup",
    "reload",
    "mock",
];

#[tokio::main]
async fn main() {
    let bench_start = Instant::now();
    // Cargo passes `--bench`; any other argument picks phases.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(unknown) = only.iter().find(|a| !PHASES.contains(&a.as_str())) {
        eprintln!("unknown phase {unknown:?}; phases: {}", PHASES.join(", "));
        std::process::exit(2);
    }
    let machine = machine();
    println!(
        "machine: {} | {} cores | Linux {} | {} MiB RAM | load average {}",
        machine["cpu"].as_str().unwrap(),
        machine["cores"],
        machine["kernel"].as_str().unwrap(),
        machine["memory_mib"],
        machine["loadavg"].as_str().unwrap()
    );

    let up = Upstream::start().await;
    let key = "sk-bench-0000-0123456789abcdef".to_string();
    let mut bench = Bench {
        openai: Provider::OpenAi {
            base_url: up.base_url.clone(),
            key: key.clone(),
        },
        key,
        up,
        png: img::photo_like_png(SIDE, SIDE, 3),
        small_png: img::photo_like_png(64, 64, 3),
        figures: Vec::new(),
        raw: serde_json::Map::new(),
    };
    let body_len = images_response(&bench.png).len();
    println!(
        "payload: {SIDE}x{SIDE} PNG of {:.2} MB ({:.2} MB of JSON with base64)\n",
        bench.png.len() as f64 / 1e6,
        body_len as f64 / 1e6
    );
    for name in PHASES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        match name {
            "latency" => bench.latency().await,
            "throughput" => bench.throughput().await,
            "startup" => bench.startup().await,
            "reload" => bench.reload().await,
            "breakdown" => bench.breakdown().await,
            "http" => bench.http().await,
            _ => bench.mock().await,
        }
    }

    let figures = &bench.figures;
    let requests = bench.up.requests.load(Ordering::SeqCst);
    println!("\n| figure | value | target | result | notes |\n|---|---|---|---|---|");
    for f in figures {
        let result = match f.pass() {
            Some(true) => "PASS",
            Some(false) => "**MISS**",
            None => "",
        };
        println!(
            "| {} | {} {} | {} | {} | {} |",
            f.name,
            num(f.value),
            f.unit,
            f.target_text(),
            result,
            f.note
        );
    }
    let misses = figures.iter().filter(|f| f.pass() == Some(false)).count();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average before: {}; after: {}",
        machine["loadavg"].as_str().unwrap_or_default(),
        load.trim()
    );
    let seconds = bench_start.elapsed().as_secs_f64();
    println!(
        "\n{} targets, {misses} missed; {requests} upstream requests; {seconds:.0} s in all",
        figures.iter().filter(|f| f.pass().is_some()).count(),
    );

    let report = json!({
        "machine": machine,
        "payload": {"side": SIDE, "png_bytes": bench.png.len(), "response_bytes": body_len},
        "settings": {"latency_delay_ms": ms(LATENCY_DELAY),
            "throughput_delay_ms": ms(THROUGHPUT_DELAY), "latency_calls": LATENCY_CALLS,
            "baseline_calls": BASELINE_CALLS, "throughput_runs": THROUGHPUT_RUNS,
            "starts": STARTS, "reloads": RELOADS, "mock_calls": MOCK_CALLS,
            "http_latency_calls": HTTP_LATENCY_CALLS, "http_throughput_runs": HTTP_THROUGHPUT_RUNS,
            "http_peer": format!("{PEER_PACKAGE}=={PEER_VERSION}")},
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "raw": bench.raw,
        "upstream_requests": requests,
        "seconds": seconds,
        "loadavg_after": load.trim(),
    });
    let path = target_dir().join("bench-e2e.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("JSON: {}", path.display());
}

/// The target directory the binary under test was built into.
fn target_dir() -> PathBuf {
    // CARGO_BIN_EXE_imagegen-mcp is <target>/<profile>/imagegen-mcp.
    Path::new(env!("CARGO_BIN_EXE_imagegen-mcp"))
        .ancestors()
        .nth(2)
        .expect("a target directory")
        .to_path_buf()
}
