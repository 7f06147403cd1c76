//! Helpers shared by the integration tests: a small `multipart/form-data` parser, so tests can
//! check exactly what an edit or variation uploads.
// Each test crate uses only some of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;

use wiremock::{Match, Request};

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// The parts of a parsed multipart body, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form(pub Vec<FormPart>);

impl Form {
    /// Parses `request`'s body using the boundary of its `content-type`; `None` when it is not
    /// well-formed `multipart/form-data`.
    pub fn parse(request: &Request) -> Option<Self> {
        let content_type = request.headers.get("content-type")?.to_str().ok()?;
        let (kind, params) = content_type.split_once(';')?;
        if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
            return None;
        }
        let boundary = params.split(';').find_map(|p| {
            let (key, value) = p.trim().split_once('=')?;
            (key.eq_ignore_ascii_case("boundary")).then(|| value.trim_matches('"').to_string())
        })?;
        parse_body(&request.body, &boundary).map(Self)
    }

    /// The text fields (parts without a file name), by name; a repeated name keeps the last.
    pub fn texts(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|p| p.filename.is_none())
            .map(|p| {
                (
                    p.name.clone(),
                    String::from_utf8_lossy(&p.body).into_owned(),
                )
            })
            .collect()
    }

    /// The value of text field `name`.
    pub fn text(&self, name: &str) -> Option<String> {
        self.texts().remove(name)
    }

    /// The file parts called `name`, in order.
    pub fn files(&self, name: &str) -> Vec<&FormPart> {
        self.0
            .iter()
            .filter(|p| p.name == name && p.filename.is_some())
            .collect()
    }

    /// The names of every part, in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|p| p.name.as_str()).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn parse_body(body: &[u8], boundary: &str) -> Option<Vec<FormPart>> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut at = find(body, &delimiter, 0)? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body.get(at..at + 2)? == b"--" {
            return Some(parts);
        }
        if body.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        let start = at + 2;
        // A part's content ends at the CRLF that belongs to the next delimiter.
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let end = find(body, &closing, start)?;
        parts.push(parse_part(&body[start..end])?);
        at = end + closing.len();
    }
}

fn parse_part(raw: &[u8]) -> Option<FormPart> {
    let split = find(raw, b"\r\n\r\n", 0)?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut part = FormPart {
        name: String::new(),
        filename: None,
        content_type: None,
        body: raw[split + 4..].to_vec(),
    };
    for line in head.split("\r\n") {
        let (header, value) = line.split_once(':')?;
        match header.trim().to_ascii_lowercase().as_str() {
            "content-disposition" => {
                for param in value.split(';').skip(1) {
                    let Some((key, value)) = param.trim().split_once('=') else {
                        continue;
                    };
                    let value = value.trim_matches('"').to_string();
                    match key {
                        "name" => part.name = value,
                        "filename" => part.filename = Some(value),
                        _ => {}
                    }
                }
            }
            "content-type" => part.content_type = Some(value.trim().to_string()),
            _ => {}
        }
    }
    Some(part)
}

/// A wiremock matcher on the parsed form: matches when the body parses and `check` holds.
pub struct MultipartForm<F>(pub F);

impl<F: Fn(&Form) -> bool + Send + Sync + 'static> Match for MultipartForm<F> {
    fn matches(&self, request: &Request) -> bool {
        Form::parse(request).is_some_and(|form| (self.0)(&form))
    }
}
