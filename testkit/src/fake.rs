//! One scriptable fake upstream over real HTTP (axum): each request to a scripted path gets
//! the next [`Reply`] of the script (the last one repeats), fixed routes serve files (result
//! URLs), and everything sent is captured. Replies can wait before their head, stream their
//! body in pieces with pauses, or break the connection mid-body; the fake notices a client
//! that went away before the end of a body, and counts requests in flight.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    response::Response,
    Router,
};
use bytes::Bytes;
use serde_json::Value;
use tokio::{io::AsyncRead, io::ReadBuf, sync::mpsc};
use tokio_util::io::ReaderStream;

/// One step of a response body.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Sends these bytes.
    Send(Bytes),
    /// Waits before the next step.
    Pause(Duration),
    /// Breaks the connection mid-body.
    Drop,
}

impl Chunk {
    /// Sends `text`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Send(Bytes::from(text.into()))
    }
}

/// What the fake answers one request with.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response status.
    pub status: u16,
    /// Response headers (a `content-type` here wins over the default).
    pub headers: Vec<(String, String)>,
    /// Wait before the response head.
    pub head_delay: Duration,
    /// The body, step by step.
    pub body: Vec<Chunk>,
}

impl Reply {
    /// `status` with `content_type` and `body` in one piece.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            head_delay: Duration::ZERO,
            body: vec![Chunk::Send(body.into())],
        }
    }

    /// A 200 JSON answer.
    pub fn json(value: &Value) -> Self {
        Self::bytes(200, "application/json", value.to_string())
    }

    /// An error status with a JSON body.
    pub fn error(status: u16, value: &Value) -> Self {
        Self::bytes(status, "application/json", value.to_string())
    }

    /// A 200 `text/event-stream` answer made of `body`.
    pub fn sse(body: Vec<Chunk>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            head_delay: Duration::ZERO,
            body,
        }
    }

    /// This reply with `status` instead.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// This reply with one more header (replacing one of the same name).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// This reply after waiting `delay` before its head.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.head_delay = delay;
        self
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Captured {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
    /// When the request arrived (its head and body were read).
    pub at: Instant,
}

impl Captured {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct Inner {
    addr: SocketAddr,
    script: Mutex<Vec<Reply>>,
    /// Scripted requests answered so far (the index of the next reply).
    served: AtomicUsize,
    routes: Mutex<HashMap<String, Reply>>,
    captured: Mutex<Vec<Captured>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    abandoned: Mutex<Vec<Instant>>,
}

/// A fake upstream on `127.0.0.1`, serving until dropped... or until the test ends: its task
/// runs on the test's runtime.
#[derive(Clone)]
pub struct FakeUpstream {
    inner: Arc<Inner>,
}

impl FakeUpstream {
    /// Starts a fake answering every request (outside [`FakeUpstream::route`]s) with the
    /// next reply of `script`; the last one repeats, and an empty script answers 404.
    pub async fn start(script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("a local address");
        let inner = Arc::new(Inner {
            addr,
            script: Mutex::new(script),
            served: AtomicUsize::new(0),
            routes: Mutex::new(HashMap::new()),
            captured: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            abandoned: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(answer).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner }
    }

    /// The OpenAI-style base URL: `http://127.0.0.1:PORT/v1`.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.inner.addr)
    }

    /// The URL of `path` (which starts with `/`) on this fake.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.inner.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Replaces the script; the next scripted request gets its first reply.
    pub fn script(&self, script: Vec<Reply>) {
        *self.inner.script.lock().unwrap() = script;
        self.inner.served.store(0, Ordering::SeqCst);
    }

    /// Answers every request to `path` with `reply`, outside the script (for result URLs).
    pub fn route(&self, path: &str, reply: Reply) {
        self.inner
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), reply);
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Captured> {
        self.inner.captured.lock().unwrap().clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.inner.captured.lock().unwrap().len()
    }

    /// When each request arrived.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.requests().iter().map(|c| c.at).collect()
    }

    /// The most requests that were waiting for their response head at once.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Waits up to `wait` for `n` requests to have arrived; whether they did.
    pub async fn wait_for_requests(&self, n: usize, wait: Duration) -> bool {
        poll_until(wait, || (self.count() >= n).then_some(()))
            .await
            .is_some()
    }

    /// When the first response was abandoned by its client (dropped before its body ended),
    /// waiting up to `wait` for it.
    pub async fn abandoned_at(&self, wait: Duration) -> Option<Instant> {
        poll_until(wait, || {
            self.inner.abandoned.lock().unwrap().first().copied()
        })
        .await
    }
}

/// Polls `check` every 10 ms until it gives a value or `wait` has passed.
pub async fn poll_until<T>(wait: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + wait;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Notes an abandoned response when dropped while still armed.
struct Watch {
    inner: Arc<Inner>,
    armed: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.armed {
            self.inner.abandoned.lock().unwrap().push(Instant::now());
        }
    }
}

/// Counts a request in flight until its response head is sent (or its handler dropped).
struct Busy(Arc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body fed through a channel: bytes, or an error that breaks the connection.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
    watch: Watch,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.rx.poll_recv(cx)) {
                Some(Ok(bytes)) => this.pending = bytes,
                Some(Err(e)) => {
                    this.watch.armed = false;
                    return Poll::Ready(Err(e));
                }
                None => {
                    this.watch.armed = false;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

async fn answer(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Bodies are test inputs (images at most): no cap needed beyond memory.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let captured = Captured {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    let n = {
        let mut all = inner.captured.lock().unwrap();
        all.push(captured);
        all.len()
    };
    let routed = inner.routes.lock().unwrap().get(&path).cloned();
    let reply = match routed {
        Some(reply) => reply,
        None => {
            let index = inner.served.fetch_add(1, Ordering::SeqCst);
            let script = inner.script.lock().unwrap();
            match script.get(index.min(script.len().saturating_sub(1))) {
                Some(reply) => reply.clone(),
                None => Reply::bytes(404, "text/plain", "no reply scripted"),
            }
        }
    };
    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.peak.fetch_max(now, Ordering::SeqCst);
    let busy = Busy(inner.clone());
    // Armed before the head delay, so a handler dropped while waiting counts too.
    let watch = Watch {
        inner: inner.clone(),
        armed: true,
    };
    tokio::time::sleep(reply.head_delay).await;
    drop(busy);
    let (tx, rx) = mpsc::channel(4);
    let steps = reply.body;
    tokio::spawn(async move {
        for step in steps {
            match step {
                Chunk::Send(bytes) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Chunk::Pause(pause) => tokio::time::sleep(pause).await,
                Chunk::Drop => {
                    let _ = tx.send(Err(io::Error::other("dropped on purpose"))).await;
                    return;
                }
            }
        }
    });
    let reader = ChannelReader {
        rx,
        pending: Bytes::new(),
        watch,
    };
    let mut response = Response::builder()
        .status(reply.status)
        .header("x-request-id", format!("req_fake_{n}"));
    for (name, value) in &reply.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response
        .body(Body::from_stream(ReaderStream::new(reader)))
        .unwrap_or_else(|_| Response::new(Body::from("bad reply script")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(fake: &FakeUpstream, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
        let request =
            format!("POST {path} HTTP/1.1\r\nhost: x\r\nx-key: k1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn scripts_answer_in_order_routes_stay_and_requests_are_captured() {
        let fake = FakeUpstream::start(vec![
            Reply::error(429, &serde_json::json!({"e": 1})).header("retry-after", "7"),
            Reply::json(&serde_json::json!({"ok": true})),
        ])
        .await;
        fake.route("/file.png", Reply::bytes(200, "image/png", "PNG"));
        let first = get(&fake, "/v1/x").await;
        assert!(first.starts_with("HTTP/1.1 429"), "{first}");
        assert!(first.contains("retry-after: 7"), "{first}");
        assert!(get(&fake, "/file.png").await.contains("\r\nPNG\r\n"));
        let second = get(&fake, "/v1/x").await;
        assert!(second.contains("{\"ok\":true}"), "{second}");
        assert!(
            get(&fake, "/v1/x").await.contains("{\"ok\":true}"),
            "the last repeats"
        );
        let seen = fake.requests();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0].header("X-Key"), Some("k1"));
        assert_eq!(seen[0].json(), Some(serde_json::json!({})));
        assert_eq!(seen[1].path, "/file.png");
        assert_eq!(fake.base(), format!("http://{}/v1", fake.addr()));
    }

    #[tokio::test]
    async fn a_broken_body_is_cut_and_an_abandoned_one_is_noticed() {
        let fake = FakeUpstream::start(vec![Reply::sse(vec![
            Chunk::text("data: 1\n\n"),
            Chunk::Pause(Duration::from_secs(30)),
        ])])
        .await;
        let mut stream = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
        stream
            .write_all(b"GET /v1/s HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("text/event-stream"));
        drop(stream);
        assert!(fake.abandoned_at(Duration::from_secs(5)).await.is_some());

        fake.script(vec![Reply::sse(vec![
            Chunk::text("data: 1\n\n"),
            Chunk::Drop,
        ])]);
        let cut = get(&fake, "/v1/s").await;
        assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
        assert!(!cut.ends_with("0\r\n\r\n"), "no clean end of body: {cut:?}");
    }
}
