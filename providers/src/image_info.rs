//! Reading an encoded image's format and size without decoding its pixels.
//!
//! Input images arrive from users and may be anything; these functions read only headers, so
//! checking a 50 MB upload costs next to nothing and a hostile header cannot make us allocate.
//! GIFs are measured from their block structure and SVGs from their root start tag, with every
//! read bounded by the bytes given.

use std::io::Cursor;

use image::ImageDecoder as _;

use crate::ImageFormat;

/// The format and dimensions of an encoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// The encoding.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames of an animation (1 for a still image).
    pub frames: u32,
}

/// Recognises PNG, JPEG, WebP, GIF or SVG from the first bytes of an encoded image.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    ImageFormat::sniff(bytes)
}

/// The width and height of a PNG, JPEG, WebP, GIF or SVG image, read from its header.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    probe(bytes).map(|info| (info.width, info.height))
}

/// Whether a PNG image has transparency: an alpha channel, or a `tRNS` chunk that gives one.
///
/// An error when the bytes are not a readable PNG.
pub fn png_has_alpha(bytes: &[u8]) -> Result<bool, String> {
    if sniff(bytes) != Some(ImageFormat::Png) {
        return Err(match sniff(bytes) {
            Some(other) => format!("it is a {} image, not a PNG", other.as_str().to_uppercase()),
            None => not_an_image(bytes),
        });
    }
    // The decoder reads the chunks before the pixel data and reports the colour type after
    // expansion, so a palette or grey image with `tRNS` counts as having alpha, as it should.
    let decoder = image::codecs::png::PngDecoder::new(Cursor::new(bytes))
        .map_err(|e| format!("unreadable PNG image: {e}"))?;
    Ok(decoder.color_type().has_alpha())
}

/// Reads the header of a PNG, JPEG, WebP, GIF or SVG image; anything else is an error.
///
/// GIFs are walked block by block to count their frames, and SVGs are read up to the end of
/// the root `<svg>` start tag; neither has its pixels decoded.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, String> {
    let format = sniff(bytes)
        .ok_or_else(|| "the data is not a PNG, JPEG, WebP, GIF or SVG image".to_string())?;
    let raster = match format {
        ImageFormat::Gif => return gif_info(bytes),
        ImageFormat::Svg => return svg_info(bytes),
        _ => to_image_format(format).ok_or_else(|| format!("cannot read {format} images"))?,
    };
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), raster)
        .into_dimensions()
        .map_err(|e| format!("unreadable {format} image: {e}"))?;
    Ok(ImageInfo {
        format,
        width,
        height,
        frames: 1,
    })
}

/// A GIF's size from its logical screen descriptor and its frame count from its image
/// descriptors, found by walking the block structure without decompressing anything.
///
/// A file that ends inside a block (a cut-off download) is an error, since its last frame
/// would show garbage; one that ends after a whole block but lacks the trailer byte is read as
/// the frames it has, as decoders do. A GIF with no frame is an error.
fn gif_info(bytes: &[u8]) -> Result<ImageInfo, String> {
    let mut gif = GifReader { bytes, pos: 6 };
    let screen = gif.take(7, "logical screen descriptor")?;
    let (mut width, mut height) = (le16(screen, 0), le16(screen, 2));
    skip_colour_table(&mut gif, screen[4], "global colour table")?;
    let mut frames = 0u32;
    // Encoders may leave the logical screen 0x0; the frames' extent is the picture then.
    let (mut extent_w, mut extent_h) = (0u32, 0u32);
    // Running out of bytes between blocks means no trailer, but every block was whole.
    while let Some(&introducer) = bytes.get(gif.pos) {
        gif.pos += 1;
        match introducer {
            0x3B => break,
            0x21 => {
                gif.take(1, "extension label")?;
                gif.skip_sub_blocks("extension")?;
            }
            0x2C => {
                let what = "image descriptor";
                let desc = gif.take(9, what)?;
                extent_w = extent_w.max(le16(desc, 0) + le16(desc, 4));
                extent_h = extent_h.max(le16(desc, 2) + le16(desc, 6));
                skip_colour_table(&mut gif, desc[8], "local colour table")?;
                gif.take(1, "LZW code size")?;
                gif.skip_sub_blocks("image data")?;
                frames = frames.saturating_add(1);
            }
            other => {
                return Err(format!(
                    "unreadable GIF image: unknown block 0x{other:02X} at byte {}",
                    gif.pos - 1
                ))
            }
        }
    }
    if frames == 0 {
        return Err("unreadable GIF image: it has no frames".into());
    }
    if width == 0 || height == 0 {
        (width, height) = (extent_w, extent_h);
    }
    if width == 0 || height == 0 {
        return Err("unreadable GIF image: its size is 0 pixels".into());
    }
    Ok(ImageInfo {
        format: ImageFormat::Gif,
        width,
        height,
        frames,
    })
}

/// A cursor over GIF bytes whose every read is checked against their length.
struct GifReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> GifReader<'a> {
    /// The next `len` bytes, or an error naming the block `what` the file was cut off in.
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.saturating_add(len);
        let slice = self.bytes.get(self.pos..end).ok_or_else(|| {
            format!(
                "unreadable GIF image: truncated in its {what} at byte {}",
                self.bytes.len()
            )
        })?;
        self.pos = end;
        Ok(slice)
    }

    /// Skips length-prefixed sub-blocks up to and including the empty one that ends them.
    fn skip_sub_blocks(&mut self, what: &str) -> Result<(), String> {
        loop {
            let len = self.take(1, what)?[0];
            if len == 0 {
                return Ok(());
            }
            self.take(usize::from(len), what)?;
        }
    }
}

/// Skips the colour table a packed descriptor byte announces, if any.
fn skip_colour_table(gif: &mut GifReader<'_>, packed: u8, what: &str) -> Result<(), String> {
    if packed & 0x80 != 0 {
        gif.take(3 << ((packed & 0x07) + 1), what)?;
    }
    Ok(())
}

fn le16(bytes: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// How far into an SVG its root start tag must end: a prolog longer than this is not a picture
/// a model wrote, and reading no further bounds the work a hostile file can cause.
const SVG_HEAD_LIMIT: usize = 256 * 1024;

/// An SVG's size from its root `<svg>` element: `width` and `height` (unitless, px, or
/// pt/pc/in/cm/mm/Q at 96 dpi; percentages of the `viewBox`), else the `viewBox`.
///
/// Only the prolog and the root start tag are read, as plain text: entities are never
/// expanded (a value using one counts as absent), and nothing outside the bytes is loaded.
fn svg_info(bytes: &[u8]) -> Result<ImageInfo, String> {
    let head = &bytes[..bytes.len().min(SVG_HEAD_LIMIT)];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let attrs = svg_root_attributes(head)?;
    let get = |name: &str| {
        attrs
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let view_box = get("viewBox").and_then(parse_view_box);
    let length = |name: &str, of_view_box: Option<f64>| match get(name).map(parse_length) {
        Some(Some(Length::Px(px))) if px > 0.0 => Some(px),
        Some(Some(Length::Percent(p))) if p > 0.0 => of_view_box.map(|v| v * p / 100.0),
        // Absent, `auto` or unreadable: the viewBox decides.
        _ => None,
    };
    let width = length("width", view_box.map(|v| v.0));
    let height = length("height", view_box.map(|v| v.1));
    let (width, height) = match (width, height, view_box) {
        (Some(w), Some(h), _) => (w, h),
        // One side given: the other follows the viewBox's aspect ratio, as browsers do.
        (Some(w), None, Some((vw, vh))) => (w, w * vh / vw),
        (None, Some(h), Some((vw, vh))) => (h * vw / vh, h),
        (None, None, Some((vw, vh))) => (vw, vh),
        _ => {
            return Err(
                "unreadable SVG image: its root <svg> element has neither a usable width and \
                 height nor a viewBox"
                    .into(),
            )
        }
    };
    let pixels = |n: f64, side: &str| {
        let rounded = n.round().max(1.0);
        if n.is_finite() && n > 0.0 && rounded <= f64::from(u32::MAX) {
            Ok(rounded as u32)
        } else {
            Err(format!(
                "unreadable SVG image: its {side} of {n} px is not a usable size"
            ))
        }
    };
    Ok(ImageInfo {
        format: ImageFormat::Svg,
        width: pixels(width, "width")?,
        height: pixels(height, "height")?,
        frames: 1,
    })
}

/// The attributes of the root `<svg>` start tag, as raw (name, value) bytes, after skipping
/// the XML declaration, processing instructions, comments and a doctype with its internal
/// subset (whose entity declarations are skipped, never read).
fn svg_root_attributes(head: &[u8]) -> Result<Vec<Attribute<'_>>, String> {
    let not_found = || {
        format!(
            "unreadable SVG image: no root <svg> start tag in its first {} KB",
            SVG_HEAD_LIMIT / 1024
        )
    };
    let mut pos = 0;
    loop {
        pos += head[pos..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or_else(not_found)?;
        let rest = &head[pos..];
        let skip = if rest.starts_with(b"<?") {
            find(rest, b"?>").map(|i| i + 2)
        } else if rest.starts_with(b"<!--") {
            find(&rest[4..], b"-->").map(|i| i + 7)
        } else if rest.starts_with(b"<!") {
            doctype_end(rest)
        } else if rest.starts_with(b"<") {
            break;
        } else {
            return Err("unreadable SVG image: text before the root element".into());
        };
        pos += skip.ok_or_else(not_found)?;
    }
    let tag = &head[pos + 1..];
    let name_end = tag
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
        .ok_or_else(not_found)?;
    let name = &tag[..name_end];
    if name != b"svg" && !name.ends_with(b":svg") {
        return Err(format!(
            "unreadable SVG image: the root element is <{}>, not <svg>",
            String::from_utf8_lossy(&name[..name.len().min(40)])
        ));
    }
    let mut attrs = Vec::new();
    let mut rest = &tag[name_end..];
    loop {
        rest = trim_start(rest);
        match rest.first() {
            None => return Err(not_found()),
            Some(b'>' | b'/') => return Ok(attrs),
            Some(_) => {}
        }
        let name_len = rest
            .iter()
            .position(|b| b.is_ascii_whitespace() || matches!(b, b'=' | b'>' | b'/'))
            .ok_or_else(not_found)?;
        let (name, after) = rest.split_at(name_len);
        let after = trim_start(after);
        let Some(after) = after.strip_prefix(b"=") else {
            return Err("unreadable SVG image: an attribute of <svg> has no value".into());
        };
        let after = trim_start(after);
        let quote = match after.first() {
            Some(q @ (b'"' | b'\'')) => *q,
            None => return Err(not_found()),
            Some(_) => return Err("unreadable SVG image: an unquoted attribute value".into()),
        };
        let len = after[1..]
            .iter()
            .position(|b| *b == quote)
            .ok_or_else(not_found)?;
        attrs.push((name, &after[1..1 + len]));
        rest = &after[len + 2..];
    }
}

/// An attribute's raw name and value, as written.
type Attribute<'a> = (&'a [u8], &'a [u8]);

/// Where a `<!DOCTYPE ...>` (or other `<!` declaration) ends, past any `[...]` internal
/// subset and quoted strings, or `None` if it does not end in `head`.
fn doctype_end(head: &[u8]) -> Option<usize> {
    let (mut quote, mut depth) = (None, 0usize);
    for (i, &b) in head.iter().enumerate().skip(2) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'[') => depth += 1,
            (None, b']') => depth = depth.saturating_sub(1),
            (None, b'>') if depth == 0 => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// An SVG length, in CSS pixels or as a percentage of the viewport.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Length {
    Px(f64),
    Percent(f64),
}

/// Parses `12`, `12.5px`, `3in`, `50%`...; `None` for `auto`, font-relative units and junk.
fn parse_length(value: &str) -> Option<Length> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(value.len());
    // `e` in a unit (em, ex) is not an exponent: back off to where the number ends.
    let (mut number, mut unit) = value.split_at(split);
    if let Some(stripped) = number.strip_suffix(['e', 'E']) {
        (number, unit) = (stripped, &value[stripped.len()..]);
    }
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "px" => 1.0,
        "%" => return Some(Length::Percent(n)),
        "pt" => 96.0 / 72.0,
        "pc" => 16.0,
        "in" => 96.0,
        "cm" => 96.0 / 2.54,
        "mm" => 96.0 / 25.4,
        "q" => 96.0 / 101.6,
        _ => return None,
    };
    Some(Length::Px(n * per_unit))
}

/// The width and height of a `viewBox="min-x min-y width height"`, when both are positive.
fn parse_view_box(value: &str) -> Option<(f64, f64)> {
    let numbers: Vec<f64> = value
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers[..] {
        [_, _, w, h] if w > 0.0 && h > 0.0 && w.is_finite() && h.is_finite() => Some((w, h)),
        _ => None,
    }
}

/// The `image` crate's name for a raster `format`.
pub(crate) fn to_image_format(format: ImageFormat) -> Option<image::ImageFormat> {
    match format {
        ImageFormat::Png => Some(image::ImageFormat::Png),
        ImageFormat::Jpeg => Some(image::ImageFormat::Jpeg),
        ImageFormat::Webp => Some(image::ImageFormat::WebP),
        ImageFormat::Gif | ImageFormat::Svg => None,
    }
}

/// Says what `bytes` are not, quoting a few leading bytes so the user can tell a PDF or an
/// HTML error page from a truncated upload, without pasting the whole file into a message.
pub(crate) fn not_an_image(bytes: &[u8]) -> String {
    const SHOWN: usize = 4;
    if bytes.is_empty() {
        return "is empty, not a PNG, JPEG or WebP image".into();
    }
    let hex: Vec<String> = bytes
        .iter()
        .take(SHOWN)
        .map(|b| format!("{b:02X}"))
        .collect();
    let more = if bytes.len() > SHOWN { "…" } else { "" };
    format!(
        "is not a PNG, JPEG or WebP image (starts with bytes {}{more})",
        hex.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn png_jpeg_and_webp_are_sniffed_and_measured() {
        let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::new(40, 30));
        for (format, ours) in [
            (image::ImageFormat::Png, ImageFormat::Png),
            (image::ImageFormat::Jpeg, ImageFormat::Jpeg),
            (image::ImageFormat::WebP, ImageFormat::Webp),
        ] {
            let bytes = encode(rgb.clone(), format);
            assert_eq!(sniff(&bytes), Some(ours));
            assert_eq!(dimensions(&bytes), Ok((40, 30)), "{ours}");
        }
        assert_eq!(sniff(b"%PDF-1.7"), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn alpha_is_found_in_rgba_and_trns_pngs_only() {
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::new(8, 8));
        assert_eq!(
            png_has_alpha(&encode(rgba, image::ImageFormat::Png)),
            Ok(true)
        );
        let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8));
        let rgb_png = encode(rgb.clone(), image::ImageFormat::Png);
        assert_eq!(png_has_alpha(&rgb_png), Ok(false));
        let jpeg = encode(rgb, image::ImageFormat::Jpeg);
        assert!(png_has_alpha(&jpeg).unwrap_err().contains("JPEG"));
        // Only the header is needed: a PNG cut off inside its pixel data still answers.
        let cut = &rgb_png[..rgb_png.len() - 12];
        assert_eq!(png_has_alpha(cut), Ok(false));
    }

    #[test]
    fn non_images_are_described_by_a_few_leading_bytes() {
        assert_eq!(
            not_an_image(b"%PDF-1.7 lots more"),
            "is not a PNG, JPEG or WebP image (starts with bytes 25 50 44 46…)"
        );
        assert_eq!(
            not_an_image(b"GIF"),
            "is not a PNG, JPEG or WebP image (starts with bytes 47 49 46)"
        );
        assert!(not_an_image(b"").contains("empty"));
        assert!(dimensions(b"<html>").is_err());
    }

    /// A real two-or-more-frame GIF made by `image`'s encoder.
    fn animated_gif(width: u32, height: u32, frames: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
            for i in 0..frames {
                let img = image::RgbaImage::from_pixel(
                    width,
                    height,
                    image::Rgba([i as u8 * 40, 0, 0, 255]),
                );
                encoder.encode_frame(image::Frame::new(img)).unwrap();
            }
        }
        out
    }

    #[test]
    fn gif_frames_are_counted_from_the_block_structure() {
        let gif = animated_gif(40, 30, 3);
        let info = probe(&gif).unwrap();
        assert_eq!(
            (info.format, info.width, info.height, info.frames),
            (ImageFormat::Gif, 40, 30, 3)
        );
        let still = encode(
            image::DynamicImage::ImageRgb8(image::RgbImage::new(7, 5)),
            image::ImageFormat::Gif,
        );
        assert_eq!(
            probe(&still).map(|i| (i.width, i.height, i.frames)),
            Ok((7, 5, 1))
        );
        // Without its trailer byte every frame is still whole, so they all count.
        assert_eq!(probe(&gif[..gif.len() - 1]).map(|i| i.frames), Ok(3));
    }

    #[test]
    fn truncated_or_broken_gifs_are_errors_at_every_cut() {
        let gif = animated_gif(16, 16, 2);
        // Every cut inside a block fails cleanly; none panics or reads past the end.
        for cut in 6..gif.len() - 1 {
            match probe(&gif[..cut]) {
                Ok(info) => assert!(info.frames >= 1, "cut at {cut}"),
                Err(e) => assert!(e.contains("GIF"), "cut at {cut}: {e}"),
            }
        }
        let err = probe(&gif[..gif.len() - 5]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let header = b"GIF89a\x10\x00\x10\x00\x00\x00\x00";
        let mut junk = header.to_vec();
        junk.push(0x99);
        assert!(probe(&junk).unwrap_err().contains("unknown block 0x99"));
        let mut empty = header.to_vec();
        empty.push(0x3B);
        assert!(probe(&empty).unwrap_err().contains("no frames"));
        assert!(probe(b"GIF89a\x01").unwrap_err().contains("truncated"));
    }

    #[test]
    fn a_gif_declaring_huge_dimensions_is_measured_without_allocating() {
        // 65535x65535 declared, one 1x1 frame: the header is all that is read.
        let mut gif = b"GIF89a\xFF\xFF\xFF\xFF\x00\x00\x00".to_vec();
        gif.extend_from_slice(&[0x21, 0xF9, 4, 0, 10, 0, 0, 0]);
        gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]);
        gif.extend_from_slice(&[2, 2, 0x4C, 0x01, 0, 0x3B]);
        let info = probe(&gif).unwrap();
        assert_eq!((info.width, info.height, info.frames), (65535, 65535, 1));
        // A 0x0 logical screen takes the frames' extent.
        gif[6..10].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(probe(&gif).map(|i| (i.width, i.height)), Ok((65535, 65535)));
    }

    fn svg_size(markup: &str) -> Result<(u32, u32), String> {
        probe(markup.as_bytes()).map(|info| {
            assert_eq!((info.format, info.frames), (ImageFormat::Svg, 1));
            (info.width, info.height)
        })
    }

    #[test]
    fn svg_sizes_come_from_width_height_or_the_view_box() {
        let ns = r#"xmlns="http://www.w3.org/2000/svg""#;
        assert_eq!(
            svg_size(&format!(r#"<svg {ns} width="320" height="200"/>"#)),
            Ok((320, 200))
        );
        assert_eq!(
            svg_size(&format!("<svg {ns} width='64px' height = '48.4px'>")),
            Ok((64, 48))
        );
        assert_eq!(svg_size(r#"<svg width="72pt" height="1in">"#), Ok((96, 96)));
        assert_eq!(
            svg_size(r#"<svg width="2.54cm" height="25.4mm">"#),
            Ok((96, 96))
        );
        assert_eq!(svg_size(r#"<svg viewBox="0 0 640 480">"#), Ok((640, 480)));
        assert_eq!(
            svg_size(r#"<svg viewBox="-10,-10,100,50" width="100%" height="50%">"#),
            Ok((100, 25))
        );
        // One side and a viewBox: the other side keeps the viewBox's aspect ratio.
        assert_eq!(
            svg_size(r#"<svg width="200" viewBox="0 0 100 50">"#),
            Ok((200, 100))
        );
        // Font-relative units and `auto` fall back to the viewBox.
        assert_eq!(
            svg_size(r#"<svg width="2em" height="auto" viewBox="0 0 30 20">"#),
            Ok((30, 20))
        );
        assert_eq!(
            svg_size(r#"<svg width="1e2" height="5E1px">"#),
            Ok((100, 50))
        );
        let prolog = "\u{FEFF}<?xml version=\"1.0\"?>\n<!-- made by a model -->\n\
            <!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd\">\n";
        assert_eq!(
            svg_size(&format!(r#"{prolog}<svg:svg width="10" height="20">"#)),
            Ok((10, 20))
        );
    }

    #[test]
    fn svgs_without_a_size_or_with_hostile_prologs_are_errors_not_expansions() {
        assert!(svg_size("<svg>").unwrap_err().contains("neither"));
        assert!(svg_size(r#"<svg width="100">"#)
            .unwrap_err()
            .contains("neither"));
        assert!(svg_size(r#"<svg width="-5" height="0" viewBox="0 0 0 10">"#).is_err());
        // Entities are never expanded: the billion laughs costs nothing and sizes nothing.
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE svg [
  <!ENTITY a "aaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY w "1000000">
  <!ENTITY x SYSTEM "file:///etc/passwd">
]>
<svg width="&w;" height="&c;">&x;</svg>"#;
        assert!(svg_size(laughs).unwrap_err().contains("neither"));
        let with_box = laughs.replace("<svg ", r#"<svg viewBox="0 0 8 6" "#);
        assert_eq!(svg_size(&with_box), Ok((8, 6)));
        // A `]` or `>` inside a quoted entity value does not end the doctype early.
        let tricky = r#"<!DOCTYPE svg [<!ENTITY e "]> <svg width='1' height='1'>">]><svg width="5" height="7">"#;
        assert_eq!(svg_size(tricky), Ok((5, 7)));
        assert!(
            svg_size("<?xml version=\"1.0\"?><html><svg width='1' height='1'>")
                .unwrap_err()
                .contains("<html>")
        );
        assert!(svg_size("<svg width=\"10\" height=\"10")
            .unwrap_err()
            .contains("no root"));
        assert!(svg_size("<!-- never closed <svg width='1' height='1'>").is_err());
        assert!(svg_size("<svg width=10 height=10>")
            .unwrap_err()
            .contains("unquoted"));
        // A prolog past the bound is not searched.
        let long = format!(
            "<!--{}--><svg width='1' height='1'>",
            " ".repeat(300 * 1024)
        );
        assert!(svg_size(&long).is_err());
    }
}
