//! The stdio transport: one JSON-RPC message per line, and every line that carries an id is
//! answered.
//!
//! rmcp's own `AsyncRwTransport` drops a line over its 16 MiB limit, and a line that is not
//! JSON, without a reply, so the client waits for a response that never comes. This one reads
//! lines itself, never buffering more than [`MAX_LINE_BYTES`] of one, and answers a line it
//! cannot pass on with a JSON-RPC error whenever it can recover the line's id: `-32600` for a
//! line over the limit, `-32700` for one that is not JSON. A line with no recoverable id gets
//! no reply (there is nothing to correlate it with, and answering garbage invites a peer that
//! echoes it into an error storm); it is logged either way, by its size and position, never by
//! its content.

use std::sync::Arc;

use futures::SinkExt as _;
use rmcp::{
    model::{ClientJsonRpcMessage, ErrorData, RequestId, ServerJsonRpcMessage},
    transport::{async_rw::JsonRpcMessageCodec, Transport},
    RoleServer,
};
use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, BufReader},
    sync::Mutex,
};
use tokio_util::codec::FramedWrite;

/// The longest line (one JSON-RPC message, newline included) the server reads: 16 MiB, the
/// same as rmcp's stdio and streamable-HTTP limits, so about 12 MB of inline base64 images per
/// request; larger inputs go by file path or `imagegen://` URI.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How much of an over-long line is kept to look for its id: clients write `id` near the
/// front (`{"jsonrpc":"2.0","id":7,"method":...`), well before the bulky `params`.
const ID_SCAN_BYTES: usize = 4096;

/// A line buffer grown past this is released after its line, so one large request does not pin
/// its memory for the rest of the session.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;

/// What the reply to a line over the limit says.
const TOO_LARGE: &str = "the request is larger than the 16 MiB line limit of this server's \
     stdio transport; pass large images by file path (inside input.allowed_dirs) or by \
     imagegen://images/... URI instead of inline base64";

/// The writer half, shared by rmcp's sends and this transport's error replies so that every
/// message reaches stdout whole and in one piece.
type Writer<W> = Arc<Mutex<Option<FramedWrite<W, JsonRpcMessageCodec<ServerJsonRpcMessage>>>>>;

/// The server's stdio transport: stdin and stdout, with bounded lines and answered errors.
pub fn stdio() -> LineTransport<tokio::io::Stdin, tokio::io::Stdout> {
    LineTransport::new(tokio::io::stdin(), tokio::io::stdout(), MAX_LINE_BYTES)
}

/// A newline-delimited JSON-RPC server transport over any reader and writer.
pub struct LineTransport<R, W> {
    read: BufReader<R>,
    /// The line read so far. It survives a cancelled `receive` (rmcp polls it in a `select!`),
    /// so the next call resumes the same line.
    line: Vec<u8>,
    /// The longest line accepted, newline included.
    limit: usize,
    /// Set while the tail of a line already rejected as too long is being skipped.
    discarding: bool,
    write: Writer<W>,
    /// An error reply not yet fully written; kept here so a cancelled `receive` cannot lose it.
    pending: Option<PendingReply>,
}

/// An error reply on its way out.
struct PendingReply {
    message: ServerJsonRpcMessage,
    /// Whether `message` is already in the writer's buffer and only needs a flush.
    fed: bool,
}

/// The outcome of one bounded line read.
enum ReadLine {
    /// A whole line is in `line`.
    Line,
    /// The line was longer than the limit and is dropped; its first bytes are kept.
    TooLong(Vec<u8>),
    Eof,
    Io(std::io::Error),
}

/// What to do with a complete line.
enum Verdict {
    Message(Box<ClientJsonRpcMessage>),
    Reply(Box<ServerJsonRpcMessage>),
    Skip,
}

impl<R, W> LineTransport<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// A transport reading lines of at most `limit` bytes from `read` and writing to `write`.
    pub fn new(read: R, write: W, limit: usize) -> Self {
        Self {
            read: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            limit,
            discarding: false,
            write: Arc::new(Mutex::new(Some(FramedWrite::new(
                write,
                JsonRpcMessageCodec::default(),
            )))),
            pending: None,
        }
    }

    /// Reads one `\n`-terminated line into `self.line` without letting it grow past the limit.
    ///
    /// `fill_buf` consumes nothing if the future is dropped, and each copy and its `consume`
    /// happen with no await between them, so cancelling this loses no bytes.
    async fn read_line(&mut self) -> ReadLine {
        loop {
            let (consumed, outcome) = {
                let available = match self.read.fill_buf().await {
                    Ok(available) => available,
                    Err(e) => return ReadLine::Io(e),
                };
                if available.is_empty() {
                    return ReadLine::Eof;
                }
                let newline = available.iter().position(|b| *b == b'\n');
                let take = newline.map_or(available.len(), |at| at + 1);
                if self.discarding {
                    if newline.is_some() {
                        self.discarding = false;
                    }
                    (take, None)
                } else if self.line.len().saturating_add(take) > self.limit {
                    let mut head = Vec::with_capacity(ID_SCAN_BYTES);
                    head.extend_from_slice(&self.line[..self.line.len().min(ID_SCAN_BYTES)]);
                    let room = ID_SCAN_BYTES - head.len();
                    head.extend_from_slice(&available[..take.min(room)]);
                    self.line = Vec::new();
                    self.discarding = newline.is_none();
                    (take, Some(ReadLine::TooLong(head)))
                } else {
                    self.line.extend_from_slice(&available[..take]);
                    (take, newline.map(|_| ReadLine::Line))
                }
            };
            self.read.consume(consumed);
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    /// Writes the pending error reply, if any; false once the writer is gone or broken.
    async fn flush_reply(&mut self) -> bool {
        let Some(pending) = self.pending.as_mut() else {
            return true;
        };
        let mut write = self.write.lock().await;
        let Some(framed) = write.as_mut() else {
            return false;
        };
        if !pending.fed {
            // `feed` takes the message, so hand it a copy: a cancelled feed must not lose it.
            if let Err(e) = framed.feed(pending.message.clone()).await {
                tracing::error!(error = %e, "could not write an error reply to stdout");
                return false;
            }
            pending.fed = true;
        }
        if let Err(e) = framed.flush().await {
            tracing::error!(error = %e, "could not write an error reply to stdout");
            return false;
        }
        drop(write);
        self.pending = None;
        true
    }

    /// Queues `message` to be written before the next line is read.
    fn reply(&mut self, message: ServerJsonRpcMessage) {
        self.pending = Some(PendingReply {
            message,
            fed: false,
        });
    }
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let write = self.write.clone();
        async move {
            match write.lock().await.as_mut() {
                Some(framed) => framed.send(item).await.map_err(Into::into),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the transport is closed",
                )),
            }
        }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        loop {
            if !self.flush_reply().await {
                return None;
            }
            match self.read_line().await {
                ReadLine::Line => {}
                ReadLine::TooLong(head) => {
                    let id = scan_id(&head);
                    tracing::warn!(
                        limit = self.limit,
                        id = ?id,
                        "an incoming line is over the transport's line limit; discarded{}",
                        if id.is_some() { ", answered with invalid_request" } else { " (no id to answer)" }
                    );
                    if let Some(id) = id {
                        self.reply(ServerJsonRpcMessage::error(
                            ErrorData::invalid_request(TOO_LARGE, None),
                            Some(id),
                        ));
                    }
                    continue;
                }
                // Bytes after the last newline are an incomplete message: nothing to deliver.
                ReadLine::Eof => return None,
                ReadLine::Io(e) => {
                    tracing::error!(error = %e, "could not read from stdin");
                    return None;
                }
            }
            let verdict = judge(&self.line);
            if self.line.capacity() > KEEP_BUFFER_BYTES {
                self.line = Vec::new();
            } else {
                self.line.clear();
            }
            match verdict {
                Verdict::Message(message) => return Some(*message),
                Verdict::Reply(message) => self.reply(*message),
                Verdict::Skip => {}
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        drop(self.write.lock().await.take());
        Ok(())
    }
}

/// Decides what a complete line (newline included) is: a message for rmcp, an error to answer,
/// or nothing.
fn judge(line: &[u8]) -> Verdict {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // RFC 8259 lets a parser ignore a UTF-8 byte order mark, and some Windows tools write one.
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Skip;
    }
    let error = match serde_json::from_slice::<ClientJsonRpcMessage>(line) {
        Ok(message) => return Verdict::Message(Box::new(message)),
        Err(e) => e,
    };
    // serde's messages can quote the input, so only the error's kind and position are logged.
    let (kind, at_line, column) = (error.classify(), error.line(), error.column());
    match kind {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            let id = scan_id(&line[..line.len().min(ID_SCAN_BYTES)]);
            tracing::warn!(
                bytes = line.len(),
                line = at_line,
                column,
                id = ?id,
                "an incoming line is not valid JSON{}",
                if id.is_some() { "; answered with parse_error" } else { " and has no id; ignored" }
            );
            match id {
                Some(id) => Verdict::Reply(Box::new(ServerJsonRpcMessage::error(
                    ErrorData::parse_error(
                        format!("Parse error: the request is not valid JSON (line {at_line}, column {column})"),
                        None,
                    ),
                    Some(id),
                ))),
                None => Verdict::Skip,
            }
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            let probe = serde_json::from_slice::<Probe>(line).ok();
            match probe {
                // A notification is never answered; one rmcp does not know is ignored, as
                // rmcp's own transport does, for clients that send their own kinds.
                Some(Probe {
                    id: None,
                    method: Some(_),
                }) => {
                    tracing::debug!("ignoring a notification the server does not understand");
                    Verdict::Skip
                }
                probe => {
                    let id = probe.and_then(|p| p.id).and_then(json_id);
                    tracing::warn!(
                        bytes = line.len(),
                        line = at_line,
                        column,
                        id = ?id,
                        "an incoming line is JSON but not a JSON-RPC message this server \
                         understands; answered with invalid_request"
                    );
                    Verdict::Reply(Box::new(ServerJsonRpcMessage::error(
                        ErrorData::invalid_request("Invalid request", None),
                        id,
                    )))
                }
            }
        }
    }
}

/// The two members of a JSON-RPC object that decide how a malformed one is answered; the rest
/// is skipped without being kept.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<serde::de::IgnoredAny>,
}

/// A JSON value as a JSON-RPC id: an integer or a string.
fn json_id(value: serde_json::Value) -> Option<RequestId> {
    match value {
        serde_json::Value::Number(n) => n.as_i64().map(RequestId::Number),
        serde_json::Value::String(s) => Some(RequestId::String(s.into())),
        _ => None,
    }
}

/// Finds the id of the top-level object in `bytes`, the start of a line that is too long or
/// not JSON: the value of an `"id"` key at depth one, if it is an integer or a string and ends
/// within `bytes`. Strings are skipped whole, so an `"id"` inside one does not count.
fn scan_id(bytes: &[u8]) -> Option<RequestId> {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => {
                let end = string_end(bytes, at)?;
                let key = bytes.get(at + 1..end)?;
                let colon = skip_whitespace(bytes, end + 1);
                if depth == 1 && key == b"id" && bytes.get(colon) == Some(&b':') {
                    return id_value(bytes.get(skip_whitespace(bytes, colon + 1)..)?);
                }
                at = end + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            _ => at += 1,
        }
    }
    None
}

/// The index of the quote closing the string that opens at `start`, if it is within `bytes`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        match bytes.get(at)? {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
}

/// The index of the first byte at or after `at` that is not JSON whitespace.
fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// An id at the start of `bytes`: a string, or an integer followed by something that ends it.
fn id_value(bytes: &[u8]) -> Option<RequestId> {
    match bytes.first()? {
        b'"' => {
            let end = string_end(bytes, 0)?;
            let text: String = serde_json::from_slice(bytes.get(..=end)?).ok()?;
            Some(RequestId::String(text.into()))
        }
        b'-' | b'0'..=b'9' => {
            let len = bytes
                .iter()
                .position(|b| !matches!(b, b'-' | b'0'..=b'9'))?;
            // A fraction or exponent makes it no JSON-RPC id this server can echo.
            if matches!(bytes.get(len), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            std::str::from_utf8(bytes.get(..len)?)
                .ok()?
                .parse()
                .ok()
                .map(RequestId::Number)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Option<RequestId> {
        scan_id(text.as_bytes())
    }

    #[test]
    fn ids_are_found_at_the_top_level_only() {
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":7,"method":"x""#),
            Some(RequestId::Number(7))
        );
        assert_eq!(
            id(r#"{ "id" : "a\"b", "#),
            Some(RequestId::String("a\"b".into()))
        );
        assert_eq!(id(r#"{"id":-3}"#), Some(RequestId::Number(-3)));
        // Nested ids and ids inside strings do not count; the top-level one after them does.
        assert_eq!(
            id(r#"{"params":{"id":1},"note":"\"id\":2","id":3,"#),
            Some(RequestId::Number(3))
        );
        for unusable in [
            r#"{"id":1.5,"#,
            r#"{"id":12"#,
            r#"{"id":"unterminated"#,
            r#"{"id":null,"#,
            r#"{"id":99999999999999999999,"#,
            "",
            "\"",
            "{\"id\\",
            "not json at all",
        ] {
            assert_eq!(id(unusable), None, "{unusable}");
        }
    }

    #[test]
    fn hostile_prefixes_never_panic() {
        const ALPHABET: &[u8] = b"{}[]\"\\:, id-0123.e\n";
        let mut bytes = Vec::new();
        for seed in 0u32..20_000 {
            bytes.clear();
            let mut x = seed.wrapping_mul(2_654_435_761);
            for _ in 0..(seed % 24) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(ALPHABET[x as usize % ALPHABET.len()]);
            }
            let _ = scan_id(&bytes);
        }
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_answered_and_reading_goes_on() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_r, server_w) = tokio::io::split(server);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let mut transport = LineTransport::new(server_r, server_w, 64);
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":5,"params":"{}"}}"#,
            "A".repeat(500)
        );
        let input = format!(
            "{long}\n{{\"id\":6,\n{long}{long}\n\n{}\n",
            r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#
        );
        let writer = tokio::spawn(async move {
            client_w.write_all(input.as_bytes()).await.unwrap();
            client_w
        });
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), transport.receive())
            .await
            .expect("no hang")
            .expect("the ping after the bad lines");
        assert_eq!(serde_json::to_value(&message).unwrap()["id"], 9);
        let _client_w = writer.await.unwrap();
        // The read half shares the duplex, so only dropping the whole transport ends it.
        drop(transport);
        let mut out = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client_r.read_to_string(&mut out),
        )
        .await
        .expect("the replies end when the transport is dropped")
        .unwrap();
        let replies: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), 3, "{out}");
        assert_eq!(replies[0]["id"], 5);
        assert_eq!(replies[0]["error"]["code"], -32600);
        assert_eq!(replies[1]["id"], 6);
        assert_eq!(replies[1]["error"]["code"], -32700);
        assert_eq!(replies[2]["id"], 5);
    }
}
