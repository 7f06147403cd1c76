//! Reads an images answer as it arrives, decoding every `"b64_json"` string chunk by chunk.
//!
//! A 1.5 MB image is 2 MB of base64. Kept whole, an answer costs the body, then the parsed
//! `String`, then the decoded bytes: three copies alive at once, with the decode only starting
//! once the last byte is in. Here each image is decoded while the network delivers it, and
//! only its decoded bytes are kept; the rest of the body (a few hundred bytes of JSON) is
//! kept as a skeleton in which each image string is replaced by `"@N"`, the index of its
//! decoded bytes, and parsed as usual.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::http::body::LENIENT_BASE64;

/// The prefix of a skeleton placeholder: never the start of real base64, whose alphabet has no `@`.
pub(crate) const PLACEHOLDER: char = '@';

/// One image's bytes, decoded and hashed as they arrived.
#[derive(Debug, PartialEq)]
pub(crate) struct Decoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) sha256: [u8; 32],
}

/// An answer read by [`BodyScanner`]: the JSON without its images, and the images decoded.
#[derive(Debug)]
pub(crate) struct ImagesBody {
    /// The body with each `b64_json` string replaced by `"@N"`.
    pub(crate) skeleton: Vec<u8>,
    /// Image N's decoded bytes and their SHA-256, or why its base64 is unusable.
    pub(crate) images: Vec<Result<Decoded, String>>,
}

impl ImagesBody {
    /// The decoded image a skeleton's `b64_json` value stands for, if it is a placeholder.
    pub(crate) fn take(&mut self, value: &str) -> Option<Result<Decoded, String>> {
        let index: usize = value.strip_prefix(PLACEHOLDER)?.parse().ok()?;
        let slot = self.images.get_mut(index)?;
        Some(std::mem::replace(slot, Err("used twice".into())))
    }
}

/// Where the scanner stands in the JSON text, outside an image string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyStage {
    /// Nothing that leads to an image.
    None,
    /// Just closed the string `"b64_json"`.
    Key,
    /// Saw `"b64_json"` then `:`; a string starting now is an image.
    Colon,
}

/// The longest string worth remembering: the key `b64_json`.
const KEY: &[u8] = b"b64_json";

/// Splits a body into skeleton and decoded images, one chunk at a time.
#[derive(Debug)]
pub(crate) struct BodyScanner {
    body: ImagesBody,
    /// Bytes the body is announced to hold, for sizing each image's buffer once.
    announced: usize,
    received: usize,
    in_string: bool,
    escaped: bool,
    /// The current string's first bytes (up to one more than `KEY`, to tell `b64_json` from longer keys).
    text: [u8; KEY.len() + 1],
    text_len: usize,
    stage: KeyStage,
    image: Option<ImageDecoder>,
    /// How many images are decoded; later ones are skipped unread, since the answer holding
    /// them is refused anyway and decoding them would only cost time and memory.
    max_images: usize,
}

impl BodyScanner {
    /// A scanner for a body announced (by `Content-Length`) to hold `announced` bytes, or 0,
    /// decoding at most `max_images` images.
    pub(crate) fn new(announced: usize, max_images: usize) -> Self {
        Self {
            body: ImagesBody {
                skeleton: Vec::with_capacity(1024),
                images: Vec::new(),
            },
            announced,
            received: 0,
            in_string: false,
            escaped: false,
            text: [0; KEY.len() + 1],
            text_len: 0,
            stage: KeyStage::None,
            image: None,
            max_images,
        }
    }

    /// Feeds the next chunk of the body.
    pub(crate) fn push(&mut self, mut chunk: &[u8]) {
        self.received += chunk.len();
        while !chunk.is_empty() {
            chunk = match self.image {
                Some(_) => self.push_image(chunk),
                None => self.push_text(chunk),
            };
        }
    }

    /// The body read so far; an image string left open counts as unusable.
    pub(crate) fn finish(mut self) -> ImagesBody {
        if self.image.take().is_some() {
            self.body
                .images
                .push(Err("the body ended inside the image's base64".into()));
        }
        self.body
    }

    /// Scans JSON outside image strings byte by byte (it is a few hundred bytes), returning
    /// the rest of the chunk once an image string opens.
    fn push_text<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        for (i, &b) in chunk.iter().enumerate() {
            if self.in_string {
                self.body.skeleton.push(b);
                if self.escaped {
                    // An escaped key is never taken for `b64_json`: no server writes it so.
                    self.escaped = false;
                    self.text_len = self.text.len();
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    self.stage = match &self.text[..self.text_len] == KEY {
                        true => KeyStage::Key,
                        false => KeyStage::None,
                    };
                } else if self.text_len < self.text.len() {
                    self.text[self.text_len] = b;
                    self.text_len += 1;
                }
                continue;
            }
            match b {
                b'"' if self.stage == KeyStage::Colon => {
                    let index = self.body.images.len();
                    self.body
                        .skeleton
                        .extend_from_slice(format!("\"{PLACEHOLDER}{index}").as_bytes());
                    self.stage = KeyStage::None;
                    // What is left of the body, less a little JSON, is this image's base64:
                    // size the buffer once rather than let it double its way up.
                    let left = self
                        .announced
                        .saturating_sub(self.received - chunk.len() + i);
                    self.image = Some(match index < self.max_images {
                        true => ImageDecoder::new(left / 4 * 3 + 3),
                        false => {
                            // Failed from the start, it reads to its closing quote decoding nothing.
                            let mut skipped = ImageDecoder::new(0);
                            skipped.fail("more images than were asked for".into());
                            skipped
                        }
                    });
                    return &chunk[i + 1..];
                }
                b'"' => {
                    self.body.skeleton.push(b);
                    self.in_string = true;
                    self.text_len = 0;
                    self.stage = KeyStage::None;
                }
                b':' if self.stage == KeyStage::Key => {
                    self.body.skeleton.push(b);
                    self.stage = KeyStage::Colon;
                }
                b' ' | b'\t' | b'\n' | b'\r' => self.body.skeleton.push(b),
                _ => {
                    self.body.skeleton.push(b);
                    self.stage = KeyStage::None;
                }
            }
        }
        &[]
    }

    /// Decodes image text up to the closing quote, returning the rest of the chunk after it.
    fn push_image<'a>(&mut self, mut chunk: &'a [u8]) -> &'a [u8] {
        let Some(image) = self.image.as_mut() else {
            return chunk;
        };
        while !chunk.is_empty() {
            if image.escaped {
                image.escaped = false;
                match chunk[0] {
                    b'/' => image.push(b"/"),
                    // Line breaks some encoders put in long base64.
                    b'n' | b'r' | b't' => {}
                    other => image.fail(format!(
                        "unexpected escape `\\{}` in the base64",
                        other.escape_ascii()
                    )),
                }
                chunk = &chunk[1..];
                continue;
            }
            match memchr::memchr2(b'"', b'\\', chunk) {
                None => {
                    image.push(chunk);
                    return &[];
                }
                Some(i) => {
                    image.push(&chunk[..i]);
                    if chunk[i] == b'\\' {
                        image.escaped = true;
                        chunk = &chunk[i + 1..];
                        continue;
                    }
                    let done = self.image.take().map(ImageDecoder::finish);
                    self.body.images.extend(done);
                    self.body.skeleton.push(b'"');
                    return &chunk[i + 1..];
                }
            }
        }
        &[]
    }
}

/// One image's base64, decoded as it arrives.
#[derive(Debug)]
struct ImageDecoder {
    out: Vec<u8>,
    /// Hashing as the bytes are decoded, while they are hot in the cache and the network is
    /// still delivering, takes the hash off the path between the last byte and the saved file.
    hasher: Sha256,
    /// Characters of a group of 4 split across chunks.
    carry: [u8; 4],
    carried: usize,
    /// Base64 characters consumed, for saying where an error is.
    consumed: usize,
    escaped: bool,
    error: Option<String>,
}

impl ImageDecoder {
    fn new(capacity: usize) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
            hasher: Sha256::new(),
            carry: [0; 4],
            carried: 0,
            consumed: 0,
            escaped: false,
            error: None,
        }
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    /// Decodes `text`; whitespace, which almost never occurs, takes a slower second pass.
    fn push(&mut self, text: &[u8]) {
        if self.error.is_some() || text.is_empty() {
            return;
        }
        let mark = (self.out.len(), self.carry, self.carried, self.consumed);
        if let Err(why) = self.push_clean(text) {
            (self.carry, self.carried, self.consumed) = (mark.1, mark.2, mark.3);
            self.out.truncate(mark.0);
            if !text.iter().any(u8::is_ascii_whitespace) {
                return self.fail(why);
            }
            let clean: Vec<u8> = text
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            if let Err(why) = self.push_clean(&clean) {
                return self.fail(why);
            }
        }
        self.hasher.update(&self.out[mark.0..]);
    }

    /// Decodes whole groups of 4 and carries the rest to the next chunk.
    fn push_clean(&mut self, mut text: &[u8]) -> Result<(), String> {
        // The carry is filled a byte at a time, so whitespace never hides in it.
        while self.carried > 0 && self.carried < 4 && !text.is_empty() {
            self.carry_byte(text[0]);
            text = &text[1..];
        }
        if self.carried == 4 {
            let group = self.carry;
            self.carried = 0;
            self.decode(&group)?;
        }
        let whole = text.len() / 4 * 4;
        self.decode(&text[..whole])?;
        text[whole..].iter().for_each(|&b| self.carry_byte(b));
        Ok(())
    }

    fn carry_byte(&mut self, b: u8) {
        if !b.is_ascii_whitespace() {
            self.carry[self.carried] = b;
            self.carried += 1;
        }
    }

    fn decode(&mut self, text: &[u8]) -> Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        let (at, start) = (self.consumed, self.out.len());
        self.consumed += text.len();
        // SIMD decoding is four times faster; the strict decoder refuses a final group without
        // its padding, and the lenient one then takes it (or says precisely what is wrong).
        if base64_simd::STANDARD
            .decode_append(text, &mut self.out)
            .is_ok()
        {
            return Ok(());
        }
        self.out.truncate(start);
        LENIENT_BASE64
            .decode_vec(text, &mut self.out)
            .map_err(|e| match e {
                base64::DecodeError::InvalidByte(offset, byte) => format!(
                    "invalid character `{}` at offset {}",
                    byte.escape_ascii(),
                    at + offset
                ),
                other => other.to_string(),
            })
    }

    /// The decoded image, once the closing quote is read.
    fn finish(mut self) -> Result<Decoded, String> {
        let group = self.carry;
        if let Some(why) = self.error.take() {
            return Err(why);
        }
        let start = self.out.len();
        self.decode(&group[..self.carried])?;
        self.hasher.update(&self.out[start..]);
        // Sized for what was left of the body; a multi-image answer over-sizes all but its last.
        if self.out.capacity() > self.out.len() + self.out.len() / 8 {
            self.out.shrink_to_fit();
        }
        Ok(Decoded {
            sha256: self.hasher.finalize().into(),
            bytes: self.out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn scan(body: &[u8], chunk: usize) -> ImagesBody {
        let mut scanner = BodyScanner::new(body.len(), usize::MAX);
        for part in body.chunks(chunk.max(1)) {
            scanner.push(part);
        }
        scanner.finish()
    }

    fn decoded(bytes: &[u8]) -> Decoded {
        Decoded {
            bytes: bytes.to_vec(),
            sha256: Sha256::digest(bytes).into(),
        }
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 3) as u8).collect()
    }

    #[test]
    fn images_are_decoded_whatever_the_chunking() {
        let (a, b) = (bytes(1000), bytes(37));
        let body = format!(
            r#"{{"created":1,"data":[{{"b64_json":"{}","revised_prompt":"a \"b64_json\": x"}},{{"b64_json" : "{}"}}],"usage":{{"total_tokens":3}}}}"#,
            STANDARD.encode(&a),
            STANDARD.encode(&b).trim_end_matches('=')
        );
        let expected = r#"{"created":1,"data":[{"b64_json":"@0","revised_prompt":"a \"b64_json\": x"},{"b64_json" : "@1"}],"usage":{"total_tokens":3}}"#;
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            let mut body = scan(body.as_bytes(), chunk);
            assert_eq!(
                String::from_utf8_lossy(&body.skeleton),
                expected,
                "chunk {chunk}"
            );
            assert_eq!(body.take("@0"), Some(Ok(decoded(&a))), "chunk {chunk}");
            assert_eq!(body.take("@1"), Some(Ok(decoded(&b))), "chunk {chunk}");
            assert_eq!(body.take("@2"), None);
            assert_eq!(body.take("aGVsbG8="), None);
        }
    }

    #[test]
    fn images_beyond_the_cap_are_skipped_without_decoding() {
        let a = bytes(3000);
        let data: Vec<String> = (0..5)
            .map(|_| format!(r#"{{"b64_json":"{}"}}"#, STANDARD.encode(&a)))
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        let mut scanner = BodyScanner::new(body.len(), 2);
        scanner.push(body.as_bytes());
        let mut body = scanner.finish();
        assert_eq!(body.take("@1"), Some(Ok(decoded(&a))));
        let skipped = body.take("@2").unwrap().unwrap_err();
        assert!(skipped.contains("more images"), "{skipped}");
        let kept: usize = body
            .images
            .iter()
            .map(|i| i.as_ref().map_or(0, |d| d.bytes.capacity()))
            .sum();
        assert!(kept <= 2 * 3000 + 64, "{kept}");
    }

    #[test]
    fn escaped_slashes_and_line_breaks_are_read_as_base64_would_be() {
        let image = bytes(300);
        let text = STANDARD.encode(&image);
        let (head, tail) = text.split_at(150);
        let escaped = format!("{}\\n{}", head.replace('/', "\\/"), tail);
        let spaced = format!("{head} {tail}");
        for b64 in [escaped, spaced] {
            for chunk in [1, 3, 4096] {
                let body = format!(r#"{{"data":[{{"b64_json":"{b64}"}}]}}"#);
                let mut read = scan(body.as_bytes(), chunk);
                assert_eq!(
                    read.take("@0"),
                    Some(Ok(decoded(&image))),
                    "{b64} / {chunk}"
                );
            }
        }
    }

    #[test]
    fn bad_base64_is_an_error_for_that_image_only() {
        let body =
            br#"{"data":[{"b64_json":"aGVs*G8="},{"b64_json":"aGVsbG8="},{"b64_json":"a\u0041"}]}"#;
        for chunk in [1, 4096] {
            let mut read = scan(body, chunk);
            let err = read.take("@0").unwrap().unwrap_err();
            assert!(err.contains("`*` at offset 4"), "{err}");
            assert_eq!(read.take("@1"), Some(Ok(decoded(b"hello"))));
            let err = read.take("@2").unwrap().unwrap_err();
            assert!(err.contains("escape"), "{err}");
        }
    }

    /// Random answers, written the ways servers write JSON, read in random chunks: every image
    /// and every other field must come out as a JSON parser reads them from the whole body.
    #[test]
    fn random_answers_read_as_a_json_parser_reads_them() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n.max(1)
        };
        let awkward = [
            "\"b64_json\": \"",
            "\\",
            "/",
            "é ✓",
            "\n",
            "@0",
            "{\"",
            "b64_json",
        ];
        for case in 0..300 {
            let images: Vec<Vec<u8>> = (0..1 + next(3))
                .map(|_| (0..next(700)).map(|_| next(256) as u8).collect())
                .collect();
            let data: Vec<serde_json::Value> = images
                .iter()
                .map(|image| {
                    let mut text = String::new();
                    for _ in 0..next(4) {
                        text.push_str(awkward[next(awkward.len() as u64) as usize]);
                    }
                    serde_json::json!({
                        "revised_prompt": text,
                        "b64_json": STANDARD.encode(image),
                        "url": null,
                    })
                })
                .collect();
            let answer = serde_json::json!({
                "created": case,
                "data": data,
                "usage": {"total_tokens": case, "note": awkward[case as usize % awkward.len()]},
            });
            let mut body = match next(2) {
                0 => serde_json::to_string(&answer).unwrap(),
                _ => serde_json::to_string_pretty(&answer).unwrap(),
            };
            if next(2) == 0 {
                // PHP's json_encode escapes every slash; JSON reads `\/` as `/`.
                body = body.replace('/', "\\/");
            }
            let expected: serde_json::Value = serde_json::from_str(&body).unwrap();
            let mut read = scan(body.as_bytes(), 1 + next(40) as usize);
            let mut skeleton: serde_json::Value = serde_json::from_slice(&read.skeleton)
                .unwrap_or_else(|e| {
                    panic!(
                        "case {case}: {e}: {}",
                        String::from_utf8_lossy(&read.skeleton)
                    )
                });
            for (i, image) in images.iter().enumerate() {
                let datum = &mut skeleton["data"][i];
                let placeholder = datum["b64_json"].as_str().unwrap().to_string();
                assert_eq!(
                    read.take(&placeholder),
                    Some(Ok(decoded(image))),
                    "case {case}"
                );
                datum["b64_json"] = expected["data"][i]["b64_json"].clone();
            }
            assert_eq!(skeleton, expected, "case {case}");
        }
    }

    #[test]
    fn other_values_and_truncated_bodies_are_left_for_the_parser() {
        let body = br#"{"data":[{"b64_json":null,"url":"https://x/y.png"}],"b64_jsonx":"zz"}"#;
        let read = scan(body, 3);
        assert_eq!(read.skeleton, body.to_vec());
        assert!(read.images.is_empty());

        let mut read = scan(br#"{"data":[{"b64_json":"aGVsbG8"#, 2);
        assert!(read.take("@0").unwrap().is_err());
        assert_eq!(read.skeleton, br#"{"data":[{"b64_json":"@0"#.to_vec());

        let html = b"<html><body>Bad gateway</body></html>";
        assert_eq!(scan(html, 5).skeleton, html.to_vec());
    }
}
