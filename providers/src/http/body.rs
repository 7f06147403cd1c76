//! Reading response bodies under a size cap, and decoding the base64 image APIs send.

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::{ErrorKind, ProviderError};

use super::error::describe_bytes;

/// Standard base64 that accepts a final group with or without its padding.
pub const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a capped read stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The body is larger than the cap.
    TooLarge,
    /// The transport failed while reading.
    Transport(reqwest::Error),
}

/// Answers decoded at once across the process: one per core.
pub fn decode_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| tokio::sync::Semaphore::new(super::available_cores()))
}

/// Reads a body as a stream, giving up as soon as it exceeds `cap` bytes.
pub async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Bytes, ReadError> {
    let announced = announced_length(&resp, cap)?;
    // One allocation of the announced size instead of a buffer doubling (and copying) its way up.
    let mut out = BytesMut::with_capacity(announced);
    read_chunks(resp, cap, |chunk| out.extend_from_slice(chunk)).await?;
    Ok(out.freeze())
}

/// The body's announced length (0 when unknown), refused at once when over `cap`.
pub fn announced_length(resp: &reqwest::Response, cap: usize) -> Result<usize, ReadError> {
    match resp.content_length() {
        Some(n) if n > cap as u64 => Err(ReadError::TooLarge),
        n => Ok(n.unwrap_or(0) as usize),
    }
}

/// Hands each chunk of a body to `take`, giving up as soon as the body exceeds `cap` bytes.
pub async fn read_chunks(
    resp: reqwest::Response,
    cap: usize,
    mut take: impl FnMut(&[u8]),
) -> Result<(), ReadError> {
    let mut received = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Transport)?;
        received += chunk.len();
        if received > cap {
            return Err(ReadError::TooLarge);
        }
        take(&chunk);
    }
    Ok(())
}

/// Reads at most `cap` bytes of a body, ignoring failures: for error bodies, where the status
/// already says what happened and the text is a bonus.
pub async fn read_truncated(resp: reqwest::Response, cap: usize) -> Bytes {
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = cap - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out.freeze()
}

/// Standard base64, tolerating line breaks, spaces and missing padding.
pub fn decode_base64(text: &str) -> Result<Bytes, base64::DecodeError> {
    // Copying 2 MB to drop whitespace that is almost never there cost a fifth of a call's CPU.
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        return LENIENT_BASE64.decode(text).map(Bytes::from);
    }
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT_BASE64.decode(clean).map(Bytes::from)
}

/// A `bad_response` error: the upstream answered with something unusable.
pub fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::BadResponse, message)
}

/// The error of a body (called `what`) over `cap` bytes.
pub fn too_large(what: &str, cap: usize) -> ProviderError {
    bad(format!(
        "{what} is larger than {}; raise max_response_bytes to accept it",
        describe_bytes(cap)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_tolerates_whitespace_and_missing_padding() {
        assert_eq!(&decode_base64("aGVs\nbG8=\n").unwrap()[..], b"hello");
        assert_eq!(&decode_base64("aGVsbG8").unwrap()[..], b"hello");
        assert!(decode_base64("***").is_err());
    }
}
