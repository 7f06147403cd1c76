//! A server-sent events parser fed with a response's chunks as they arrive.
//!
//! Chunks may split a line, a `\r\n` or a UTF-8 character anywhere, so bytes are buffered until
//! a line ends. The rules are the WHATWG ones a streamed image needs: lines end in `\n`, `\r\n`
//! or `\r`; `data:` lines of one event join with `\n`; a line starting with `:` is a comment; a
//! blank line ends the event; an event cut off by the end of the stream is never delivered.

/// One event: its `event:` name (`message` when it had none) and its data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, `message` when the event had none.
    pub event: String,
    /// The event's `data:` lines, joined with `\n`.
    pub data: String,
}

/// Turns chunks into events; keeps what belongs to an unfinished line or event.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// How far into `buf` is known to hold no line end, so a multi-megabyte base64 line is
    /// scanned once rather than once per chunk.
    scanned: usize,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds one chunk and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        loop {
            let Some(offset) = self.buf[from..]
                .iter()
                .position(|b| matches!(b, b'\n' | b'\r'))
            else {
                from = self.buf.len();
                break;
            };
            let end = from + offset;
            let next = match (self.buf[end], self.buf.get(end + 1)) {
                // The `\n` of a `\r\n` may still be on its way.
                (b'\r', None) => {
                    from = end;
                    break;
                }
                (b'\r', Some(b'\n')) => end + 2,
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            self.line(&line, &mut events);
            start = next;
            from = next;
        }
        self.buf.drain(..start);
        self.scanned = from - start;
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                let event = match std::mem::take(&mut self.event) {
                    name if name.is_empty() => "message".to_string(),
                    name => name,
                };
                events.push(SseEvent {
                    event,
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // Comments (empty field), `id` and `retry` mean nothing for a one-shot image stream.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            event: name.into(),
            data: data.into(),
        }
    }

    fn parse_in_pieces(text: &str, piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        text.as_bytes()
            .chunks(piece)
            .flat_map(|c| parser.push(c))
            .collect()
    }

    #[test]
    fn events_survive_any_chunking_and_any_line_ending() {
        let text = ": keep-alive\n\
                    event: image_generation.partial_image\n\
                    data: {\"a\":1}\n\
                    \n\
                    event: image_generation.completed\r\n\
                    data: {\"b\":\r\n\
                    data:2}\r\n\
                    id: 7\r\n\
                    \r\n\
                    data: plain\r\r\
                    data: €uro\n\n";
        let expected = vec![
            event("image_generation.partial_image", "{\"a\":1}"),
            event("image_generation.completed", "{\"b\":\n2}"),
            event("message", "plain"),
            event("message", "€uro"),
        ];
        for piece in 1..=text.len() {
            assert_eq!(parse_in_pieces(text, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn an_unfinished_event_is_never_delivered() {
        let mut parser = SseParser::default();
        assert!(parser
            .push(b"event: image_generation.completed\ndata: {}\n")
            .is_empty());
        let mut parser = SseParser::default();
        assert!(parser.push(b"event: x\n\n: only a comment\n\n").is_empty());
    }

    #[test]
    fn a_long_line_is_assembled_from_many_chunks() {
        let payload = "A".repeat(100_000);
        let text = format!("data: {payload}\n\n");
        let events = parse_in_pieces(&text, 997);
        assert_eq!(events, vec![event("message", &payload)]);
    }
}
