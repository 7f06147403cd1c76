//! A small W3C WebDriver client over reqwest, driving Debian's headless `chromium` through
//! `chromedriver`: the few commands the gallery tests use, and no browser download.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless Chromium session in it.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    /// Where screenshots go: `target/screenshots/`.
    pub shots: PathBuf,
}

/// The program at `path` or on `PATH` under `name`.
fn program(path: &str, name: &str) -> Option<PathBuf> {
    if Path::new(path).exists() {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (with a message) when they
    /// are not installed, unless `IMAGEGEN_TEST_BROWSER=1`, which makes that a failure.
    pub async fn start() -> Option<Self> {
        let required = std::env::var("IMAGEGEN_TEST_BROWSER").is_ok_and(|v| v == "1");
        let (Some(driver), Some(chromium)) = (
            program("/usr/bin/chromedriver", "chromedriver"),
            program("/usr/bin/chromium", "chromium"),
        ) else {
            assert!(
                !required,
                "IMAGEGEN_TEST_BROWSER=1 but chromium or chromedriver is not installed"
            );
            eprintln!("skipped: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = std::env::temp_dir().join(format!("imagegen-chromium-{port}"));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"));
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Some(Self {
            driver,
            base: format!("{base}/session/{session}"),
            http,
            shots,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits up to 10 s for `script` to return something truthy, and returns it.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.eval(script, json!([])).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {}",
                self.eval(
                    "return document.body ? document.body.innerText : ''",
                    json!([])
                )
                .await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first element matching CSS `selector`.
    async fn element(&self, selector: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": selector}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_string()
    }

    /// Types `text` into the element matching `selector`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clicks the element matching `selector`.
    pub async fn click(&self, selector: &str) {
        let id = self.element(selector).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    /// Runs the next commands inside the iframe matching `selector`.
    pub async fn enter_frame(&self, selector: &str) {
        let id = self.element(selector).await;
        self.command(
            reqwest::Method::POST,
            "/frame",
            json!({ "id": { ELEMENT: id } }),
        )
        .await;
    }

    /// Runs the next commands in the top-level page again.
    pub async fn leave_frame(&self) {
        self.command(reqwest::Method::POST, "/frame", json!({ "id": null }))
            .await;
    }

    /// Saves a PNG screenshot as `target/screenshots/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let value = self
            .command(reqwest::Method::GET, "/screenshot", json!({}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session and chromedriver.
    pub async fn quit(mut self) {
        let _ = self.http.delete(&self.base).send().await;
        let _ = self.driver.start_kill();
        let _ = self.driver.wait().await;
    }
}
