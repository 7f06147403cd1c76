//! Opt-in metadata embedding (`output.embed_metadata`): the prompt and a few facts written into
//! the image file itself, so they travel with a copy that leaves the store without its sidecar.
//!
//! - PNG: two uncompressed `iTXt` chunks before the first `IDAT`: `Description` (the prompt,
//!   the keyword the PNG spec defines for it; exiftool shows it as `PNG:Description`, Pillow in
//!   `Image.info`, ImageMagick in `identify -verbose`) and `XML:com.adobe.xmp` (the same XMP
//!   packet as JPEG and WebP, which exiftool, Adobe tools and digiKam read as `XMP-dc`).
//! - JPEG: an XMP packet in an APP1 segment after SOI and the JFIF/Exif segments.
//! - WebP: an `XMP ` chunk; a simple (VP8/VP8L) file becomes extended with a `VP8X` header.
//! - Anything else (GIF, SVG) is left alone with a note.
//!
//! A file that may carry a C2PA manifest (PNG `caBX`, JPEG APP11, WebP `C2PA`, or the JUMBF
//! label `c2pa` anywhere in the bytes) is never touched: any change breaks its content
//! credentials. Detection errs on the side of skipping. Every parse is bounded and checked; on
//! any doubt the bytes stay as they were and the reason goes into the sidecar.

use imagegen_providers::ImageFormat;

/// The most bytes the prompt (and, separately, the revised prompt) takes in the file, after
/// XML escaping: both together with the rest of the packet stay inside one JPEG APP1 segment.
const MAX_TEXT_BYTES: usize = 30_000;

/// The most bytes each short field (provider, model, name, time) takes after escaping.
const MAX_SHORT_BYTES: usize = 256;

/// The namespace identifier that starts a JPEG APP1 segment holding XMP.
const JPEG_XMP_NAMESPACE: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// The largest XMP packet one APP1 segment holds: 65535 less the length field and namespace.
const MAX_JPEG_PACKET: usize = 65_535 - 2 - JPEG_XMP_NAMESPACE.len();

/// The keyword of the PNG `iTXt` chunk holding XMP, as the XMP spec names it.
const PNG_XMP_KEYWORD: &[u8] = b"XML:com.adobe.xmp";

/// The PNG file signature.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The namespace of the facts XMP has no standard property for.
const IMAGEGEN_NAMESPACE: &str = "urn:imagegen-mcp:xmp:1.0/";

/// The XMP flag of a WebP `VP8X` header.
const VP8X_XMP_FLAG: u8 = 0x04;

/// The alpha flag of a WebP `VP8X` header.
const VP8X_ALPHA_FLAG: u8 = 0x10;

/// What is written into the file: facts already in the sidecar, never a secret.
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a> {
    /// The prompt as the caller gave it.
    pub prompt: &'a str,
    /// The prompt as the provider rewrote it.
    pub revised_prompt: Option<&'a str>,
    /// The provider's configured name.
    pub provider: Option<&'a str>,
    /// The model that served the request.
    pub model: Option<&'a str>,
    /// When it was stored, RFC 3339 in UTC.
    pub created: &'a str,
    /// The image's `imagegen://images/{name}` URI.
    pub uri: &'a str,
}

/// A file with the metadata written into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedded {
    /// The new file.
    pub bytes: Vec<u8>,
    /// Whether the prompt or the revised prompt was cut to fit.
    pub truncated: bool,
    /// Where the metadata went, for the sidecar's note.
    pub container: &'static str,
}

impl Embedded {
    /// The sidecar's note on what was done.
    pub fn note(&self) -> String {
        let mut note = format!(
            "metadata embedded in the file ({}): sha256 is the stored file's, upstream_sha256 the provider's",
            self.container
        );
        if self.truncated {
            note.push_str(&format!(
                "; the prompt was truncated to {MAX_TEXT_BYTES} bytes in the file (the sidecar has it whole)"
            ));
        }
        note
    }
}

/// Why the file was left as the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped(pub String);

impl Skipped {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// The sidecar's note on what was not done.
    pub fn note(&self) -> String {
        format!("metadata not embedded: {}", self.0)
    }
}

/// Writes `meta` into `bytes` (an image in `format`), or says why it did not.
pub fn embed(bytes: &[u8], format: ImageFormat, meta: &Metadata) -> Result<Embedded, Skipped> {
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Webp
    ) {
        return Err(Skipped::new(format!(
            "{} files have no place for it (format)",
            format.as_str()
        )));
    }
    // Before any parsing: whatever container holds a manifest, its JUMBF label is `c2pa`.
    if memchr::memmem::find(bytes, b"c2pa").is_some() {
        return Err(c2pa("the bytes hold a `c2pa` label"));
    }
    let (packet, truncated) = xmp_packet(meta);
    let bytes = match format {
        ImageFormat::Png => embed_png(bytes, meta, &packet)?,
        ImageFormat::Jpeg => embed_jpeg(bytes, &packet)?,
        _ => embed_webp(bytes, &packet)?,
    };
    Ok(Embedded {
        bytes,
        truncated,
        container: match format {
            ImageFormat::Png => "PNG iTXt Description and XMP",
            ImageFormat::Jpeg => "XMP in an APP1 segment",
            _ => "WebP XMP chunk",
        },
    })
}

fn c2pa(why: &str) -> Skipped {
    Skipped::new(format!(
        "the file may carry a C2PA manifest ({why}), which any change would break"
    ))
}

fn malformed(format: &str, why: &str) -> Skipped {
    Skipped::new(format!("the {format} file could not be parsed: {why}"))
}

/// The XMP packet of `meta`, and whether a text in it was cut to fit.
fn xmp_packet(meta: &Metadata) -> (String, bool) {
    let (prompt, mut truncated) = escape_bounded(meta.prompt, MAX_TEXT_BYTES);
    let mut packet = String::with_capacity(prompt.len() + 1024);
    packet.push_str(concat!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n",
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n",
        " <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n",
        "  <rdf:Description rdf:about=\"\"\n",
        "    xmlns:dc=\"http://purl.org/dc/elements/1.1/\"\n",
        "    xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\"\n",
    ));
    packet.push_str(&format!("    xmlns:imagegen=\"{IMAGEGEN_NAMESPACE}\">\n"));
    packet.push_str("   <dc:description><rdf:Alt><rdf:li xml:lang=\"x-default\">");
    packet.push_str(&prompt);
    packet.push_str("</rdf:li></rdf:Alt></dc:description>\n");
    let short = |s: &str| escape_bounded(s, MAX_SHORT_BYTES).0;
    packet.push_str(&format!("   <dc:source>{}</dc:source>\n", short(meta.uri)));
    packet.push_str(&format!(
        "   <xmp:CreatorTool>imagegen-mcp {}</xmp:CreatorTool>\n",
        env!("CARGO_PKG_VERSION")
    ));
    packet.push_str(&format!(
        "   <xmp:CreateDate>{}</xmp:CreateDate>\n",
        short(meta.created)
    ));
    if let Some(provider) = meta.provider {
        packet.push_str(&format!(
            "   <imagegen:provider>{}</imagegen:provider>\n",
            short(provider)
        ));
    }
    if let Some(model) = meta.model {
        packet.push_str(&format!(
            "   <imagegen:model>{}</imagegen:model>\n",
            short(model)
        ));
    }
    if let Some(revised) = meta.revised_prompt {
        let (revised, cut) = escape_bounded(revised, MAX_TEXT_BYTES);
        truncated |= cut;
        packet.push_str("   <imagegen:revisedPrompt>");
        packet.push_str(&revised);
        packet.push_str("</imagegen:revisedPrompt>\n");
    }
    packet.push_str("  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end=\"r\"?>");
    (packet, truncated)
}

/// `text` escaped for XML character data, cut on a character boundary so the result takes at
/// most `budget` bytes; characters XML 1.0 cannot hold at all become U+FFFD.
fn escape_bounded(text: &str, budget: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(budget));
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let piece: &str = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\t' | '\n' | '\r' => c.encode_utf8(&mut buf),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => "\u{fffd}",
            c => c.encode_utf8(&mut buf),
        };
        if out.len() + piece.len() > budget {
            return (out, true);
        }
        out.push_str(piece);
    }
    (out, false)
}

/// `text` without NUL (which ends a PNG text field), cut on a character boundary to `budget`.
fn png_text_bounded(text: &str, budget: usize) -> String {
    let mut out = String::with_capacity(text.len().min(budget));
    for c in text.chars().filter(|c| *c != '\0') {
        if out.len() + c.len_utf8() > budget {
            break;
        }
        out.push(c);
    }
    out
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A PNG with `Description` and XMP `iTXt` chunks before its first `IDAT`.
fn embed_png(bytes: &[u8], meta: &Metadata, packet: &str) -> Result<Vec<u8>, Skipped> {
    let bad = |why: &str| malformed("PNG", why);
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(bad("no PNG signature"));
    }
    let mut pos = PNG_SIGNATURE.len();
    let mut first_idat = None;
    let mut ended = false;
    // Each turn moves past at least one 12-byte chunk frame, so this ends.
    while pos < bytes.len() {
        let len = be32(bytes, pos).ok_or_else(|| bad("a chunk is cut short"))?;
        if len > i32::MAX as u32 {
            return Err(bad("a chunk length is out of range"));
        }
        let end = pos
            .checked_add(12)
            .and_then(|p| p.checked_add(len as usize))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| bad("a chunk is cut short"))?;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..end - 4];
        if pos == PNG_SIGNATURE.len() && kind != b"IHDR" {
            return Err(bad("the first chunk is not IHDR"));
        }
        match kind {
            b"caBX" => return Err(c2pa("a caBX chunk")),
            b"IDAT" => {
                first_idat.get_or_insert(pos);
            }
            b"iTXt" if data.starts_with(PNG_XMP_KEYWORD) => {
                return Err(Skipped::new("the file already carries XMP"))
            }
            b"IEND" => {
                ended = true;
                break;
            }
            _ => {}
        }
        pos = end;
    }
    if !ended {
        return Err(bad("no IEND chunk"));
    }
    let insert = first_idat.ok_or_else(|| bad("no IDAT chunk"))?;
    let description = png_text_bounded(meta.prompt, MAX_TEXT_BYTES);
    let mut out = Vec::with_capacity(bytes.len() + description.len() + packet.len() + 64);
    out.extend_from_slice(&bytes[..insert]);
    png_itxt(&mut out, b"Description", &description);
    png_itxt(&mut out, PNG_XMP_KEYWORD, packet);
    out.extend_from_slice(&bytes[insert..]);
    Ok(out)
}

/// Appends an uncompressed `iTXt` chunk (no language tag) to `out`.
fn png_itxt(out: &mut Vec<u8>, keyword: &[u8], text: &str) {
    // Keyword, NUL, compression flag 0, method 0, empty language tag and translated keyword.
    let len = keyword.len() + 5 + text.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(b"iTXt");
    out.extend_from_slice(keyword);
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    out.extend_from_slice(text.as_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A JPEG with an XMP APP1 segment after SOI and its leading JFIF/Exif segments.
fn embed_jpeg(bytes: &[u8], packet: &str) -> Result<Vec<u8>, Skipped> {
    let bad = |why: &str| malformed("JPEG", why);
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(bad("no SOI marker"));
    }
    if packet.len() > MAX_JPEG_PACKET {
        return Err(Skipped::new("the metadata does not fit one APP1 segment"));
    }
    let mut pos = 2;
    let mut insert = 2;
    let mut leading = true;
    // Each turn moves past at least one marker byte, so this ends.
    loop {
        if bytes.get(pos) != Some(&0xFF) {
            return Err(bad("a segment does not start with a marker"));
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *bytes
            .get(pos)
            .ok_or_else(|| bad("the file ends before its image data"))?;
        pos += 1;
        match marker {
            0x00 | 0xD8 | 0xD9 => return Err(bad("an unexpected marker before the image data")),
            0x01 | 0xD0..=0xD7 => {
                leading = false;
                continue;
            }
            _ => {}
        }
        let len = bytes
            .get(pos..pos + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| bad("a segment is cut short"))?;
        let end = pos + len;
        if len < 2 || end > bytes.len() {
            return Err(bad("a segment is cut short"));
        }
        let payload = &bytes[pos + 2..end];
        match marker {
            0xEB => return Err(c2pa("an APP11 segment")),
            0xE1 if payload.starts_with(JPEG_XMP_NAMESPACE) => {
                return Err(Skipped::new("the file already carries XMP"))
            }
            // Start of scan: the header is over.
            0xDA => break,
            0xE0 | 0xE1 if leading => insert = end,
            _ => leading = false,
        }
        pos = end;
    }
    let mut out = Vec::with_capacity(bytes.len() + packet.len() + 64);
    out.extend_from_slice(&bytes[..insert]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    let len = 2 + JPEG_XMP_NAMESPACE.len() + packet.len();
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(JPEG_XMP_NAMESPACE);
    out.extend_from_slice(packet.as_bytes());
    out.extend_from_slice(&bytes[insert..]);
    Ok(out)
}

/// One chunk of a WebP file: its FourCC and where it starts and ends (padding included).
struct WebpChunk {
    fourcc: [u8; 4],
    start: usize,
    end: usize,
}

/// A WebP with an `XMP ` chunk at the end and the XMP flag set (a `VP8X` added if needed).
fn embed_webp(bytes: &[u8], packet: &str) -> Result<Vec<u8>, Skipped> {
    let bad = |why: &str| malformed("WebP", why);
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err(bad("no RIFF WEBP header"));
    }
    let riff = le32(bytes, 4).ok_or_else(|| bad("no RIFF size"))? as u64;
    if riff + 8 != bytes.len() as u64 {
        return Err(bad("the RIFF size does not match the file"));
    }
    let mut chunks = Vec::new();
    let mut pos = 12;
    // Each turn moves past at least one 8-byte chunk header, so this ends.
    while pos < bytes.len() {
        let size = le32(bytes, pos + 4).ok_or_else(|| bad("a chunk is cut short"))? as u64;
        let end = pos as u64 + 8 + size + (size & 1);
        if end > bytes.len() as u64 {
            return Err(bad("a chunk is cut short"));
        }
        let mut fourcc = [0u8; 4];
        fourcc.copy_from_slice(&bytes[pos..pos + 4]);
        match &fourcc {
            b"C2PA" => return Err(c2pa("a C2PA chunk")),
            b"XMP " => return Err(Skipped::new("the file already carries XMP")),
            _ => {}
        }
        chunks.push(WebpChunk {
            fourcc,
            start: pos,
            end: end as usize,
        });
        pos = end as usize;
    }
    let first = chunks.first().ok_or_else(|| bad("no chunks"))?;
    let payload = &bytes[first.start + 8..first.end];
    let mut out = Vec::with_capacity(bytes.len() + packet.len() + 64);
    out.extend_from_slice(&bytes[..12]);
    match &first.fourcc {
        b"VP8X" => {
            if payload.len() < 10 {
                return Err(bad("the VP8X chunk is cut short"));
            }
            out.extend_from_slice(&bytes[12..]);
            out[first.start + 8] |= VP8X_XMP_FLAG;
        }
        simple @ (b"VP8 " | b"VP8L") => {
            if chunks.len() != 1 {
                return Err(bad("a simple file with more than one chunk"));
            }
            let (width, height, alpha) = if simple == b"VP8 " {
                vp8_size(payload).ok_or_else(|| bad("the VP8 frame header is unreadable"))?
            } else {
                vp8l_size(payload).ok_or_else(|| bad("the VP8L header is unreadable"))?
            };
            let flags = VP8X_XMP_FLAG | if alpha { VP8X_ALPHA_FLAG } else { 0 };
            out.extend_from_slice(b"VP8X");
            out.extend_from_slice(&10u32.to_le_bytes());
            out.extend_from_slice(&[flags, 0, 0, 0]);
            out.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
            out.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
            out.extend_from_slice(&bytes[12..]);
        }
        _ => return Err(bad("the first chunk is not VP8X, VP8 or VP8L")),
    }
    out.extend_from_slice(b"XMP ");
    out.extend_from_slice(&(packet.len() as u32).to_le_bytes());
    out.extend_from_slice(packet.as_bytes());
    if packet.len() % 2 == 1 {
        out.push(0);
    }
    let riff = u32::try_from(out.len() - 8).map_err(|_| bad("the file would be too large"))?;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    Ok(out)
}

/// Width, height and alpha (never, for VP8) of a lossy key frame.
fn vp8_size(payload: &[u8]) -> Option<(u32, u32, bool)> {
    let head = payload.get(..10)?;
    let key_frame = head[0] & 1 == 0;
    if !key_frame || head[3..6] != [0x9D, 0x01, 0x2A] {
        return None;
    }
    let width = (u16::from_le_bytes([head[6], head[7]]) & 0x3FFF) as u32;
    let height = (u16::from_le_bytes([head[8], head[9]]) & 0x3FFF) as u32;
    (width > 0 && height > 0).then_some((width, height, false))
}

/// Width, height and alpha of a lossless image.
fn vp8l_size(payload: &[u8]) -> Option<(u32, u32, bool)> {
    if *payload.first()? != 0x2F {
        return None;
    }
    let bits = le32(payload, 1)?;
    if bits >> 29 != 0 {
        return None;
    }
    let width = (bits & 0x3FFF) + 1;
    let height = ((bits >> 14) & 0x3FFF) + 1;
    Some((width, height, (bits >> 28) & 1 == 1))
}

#[cfg(test)]
mod tests;
