//! The stdio transport, driven by raw lines: malformed and over-long requests that carry an id
//! are answered with a JSON-RPC error, and the server keeps serving.

use std::{process::Stdio, time::Duration};

use imagegen_mcp::transport::MAX_LINE_BYTES;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout},
    task::JoinHandle,
};

/// How long any one reply may take.
const PROMPT: Duration = Duration::from_secs(15);

/// Content that must never reach the log.
const MARKER: &str = "CONTENT-MARKER-never-logged";

/// The server as a child process spoken to line by line.
struct Raw {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: JoinHandle<String>,
}

impl Raw {
    /// Starts `imagegen-mcp serve` and completes the MCP handshake.
    async fn start(home: &std::path::Path) -> Self {
        let mut child = crate::common::binary(home, &[])
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn imagegen-mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut err = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut out = String::new();
            let _ = err.read_to_string(&mut out).await;
            out
        });
        let mut raw = Self {
            child,
            stdin,
            stdout,
            stderr,
        };
        raw.send(&json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}
            }
        }))
        .await;
        assert!(raw.reply_to(&json!(0)).await.get("result").is_some());
        raw.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        raw
    }

    /// Writes `bytes` and a newline.
    async fn line(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.expect("write");
        self.stdin.write_all(b"\n").await.expect("write");
        self.stdin.flush().await.expect("flush");
    }

    /// Writes one JSON message.
    async fn send(&mut self, message: &Value) {
        self.line(message.to_string().as_bytes()).await;
    }

    /// The next message that carries an id (notifications are skipped); it must be for `id`.
    async fn reply_to(&mut self, id: &Value) -> Value {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PROMPT, self.stdout.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("no reply to {id} within {PROMPT:?}"))
                .expect("read stdout");
            assert!(read > 0, "the server closed stdout before answering {id}");
            let message: Value = serde_json::from_str(&line).expect("the server writes JSON");
            if let Some(got) = message.get("id") {
                assert_eq!(got, id, "a reply for another id: {message}");
                return message;
            }
        }
    }

    /// Asks for `tools/list` with `id` and checks the tools come back.
    async fn tools_list(&mut self, id: i64) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}))
            .await;
        let reply = self.reply_to(&json!(id)).await;
        let tools = reply["result"]["tools"].as_array().expect("tools");
        assert!(!tools.is_empty(), "{reply}");
    }

    /// Closes stdin and returns the server's log once it has exited.
    async fn stop(mut self) -> String {
        drop(self.stdin);
        let status = tokio::time::timeout(PROMPT, self.child.wait())
            .await
            .expect("the server exits when stdin closes")
            .expect("wait");
        assert!(status.success(), "{status}");
        tokio::time::timeout(PROMPT, self.stderr)
            .await
            .expect("stderr ends")
            .expect("stderr task")
    }
}

#[tokio::test]
async fn unparsable_json_with_an_id_is_answered_with_a_parse_error() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Raw::start(home.path()).await;
    server
        .line(
            format!(
                r#"{{"jsonrpc":"2.0","id": 7,"method":"tools/list","params":{{"x":"{MARKER}" oops"#
            )
            .as_bytes(),
        )
        .await;
    let reply = server.reply_to(&json!(7)).await;
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    server.tools_list(8).await;
    let log = server.stop().await;
    assert!(log.contains("not valid JSON"), "{log}");
    assert!(!log.contains(MARKER), "the log quotes the content: {log}");
}

#[tokio::test]
async fn a_line_over_the_limit_is_answered_and_the_server_keeps_serving() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Raw::start(home.path()).await;
    // Streamed in chunks so the test holds one MiB of it, not the whole line.
    let head = r#"{"jsonrpc":"2.0","id":"big-1","method":"tools/call","params":{"name":"edit_image","arguments":{"prompt":"x","images":[""#;
    server.stdin.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'A'; 1024 * 1024];
    for _ in 0..=MAX_LINE_BYTES / chunk.len() {
        server.stdin.write_all(&chunk).await.unwrap();
    }
    server.line(br#""]}}}"#).await;
    let reply = server.reply_to(&json!("big-1")).await;
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("16 MiB")
            && message.contains("file path")
            && message.contains("imagegen://"),
        "{message}"
    );
    server.tools_list(9).await;
    let log = server.stop().await;
    assert!(log.contains("line limit"), "{log}");
}

#[tokio::test]
async fn garbage_without_an_id_gets_no_reply_and_valid_requests_still_work() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Raw::start(home.path()).await;
    server
        .line(format!("garbage {MARKER} {{[").as_bytes())
        .await;
    server.line(b"\xff\xfe not even utf-8").await;
    // The next reply must be for the ping: nothing answered the garbage.
    server
        .send(&json!({"jsonrpc": "2.0", "id": 30, "method": "ping"}))
        .await;
    let reply = server.reply_to(&json!(30)).await;
    assert!(reply.get("result").is_some(), "{reply}");
    server.tools_list(31).await;
    let log = server.stop().await;
    assert!(!log.contains(MARKER), "the log quotes the content: {log}");
}
