//! Embedding per format: the file still decodes, the text is there, checksums and sizes are
//! right, C2PA files and odd formats are left alone, and no input makes it panic.

use std::io::Cursor;

use base64::Engine as _;
use image::ImageDecoder as _;

use super::*;

const PROMPT: &str = "A lighthouse <at> dusk & \"fog\", café ☕";

fn meta(prompt: &str) -> Metadata<'_> {
    Metadata {
        prompt,
        revised_prompt: Some("A tall lighthouse at dusk"),
        provider: Some("mock"),
        model: Some("mock-image-1"),
        created: "2026-12-01T22:00:00Z",
        uri: "imagegen://images/20261201-220000-a-lighthouse-0123abcd.png",
    }
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn encoded(format: image::ImageFormat, alpha: bool) -> Vec<u8> {
    let img = if alpha {
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            5,
            3,
            image::Rgba([9, 8, 7, 128]),
        ))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(5, 3, image::Rgb([9, 8, 7])))
    };
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png() -> Vec<u8> {
    encoded(image::ImageFormat::Png, true)
}

fn jpeg() -> Vec<u8> {
    encoded(image::ImageFormat::Jpeg, false)
}

/// A lossless (VP8L) simple file with alpha.
fn webp_lossless() -> Vec<u8> {
    encoded(image::ImageFormat::WebP, true)
}

/// A 1x1 lossy (VP8) simple file.
fn webp_lossy() -> Vec<u8> {
    b64("UklGRiIAAABXRUJQVlA4IBYAAAAwAQCdASoBAAEADsD+JaQAA3AAAAAA")
}

/// A 1x1 extended file: VP8X (alpha flag), ALPH and VP8.
fn webp_extended() -> Vec<u8> {
    b64("UklGRkoAAABXRUJQVlA4WAoAAAAQAAAAAAAAAAAAQUxQSAwAAAARBxAR/Q9ERP8DAABWUDggGAAAABQBAJ0BKgEAAQAAAP4AAA3AAP7mtQAAAA==")
}

/// The text of every iTXt chunk of a PNG, by keyword, as the png crate reads them.
fn png_texts(bytes: &[u8]) -> Vec<(String, String)> {
    let reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    reader
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect()
}

/// Every chunk's CRC of a PNG is right, and the chunks end with IEND at the end of the file.
fn assert_png_crcs(bytes: &[u8]) {
    let mut pos = 8;
    loop {
        let len = be32(bytes, pos).unwrap() as usize;
        let body = &bytes[pos + 4..pos + 8 + len];
        let crc = be32(bytes, pos + 8 + len).unwrap();
        assert_eq!(crc32fast::hash(body), crc, "chunk at {pos}");
        pos += 12 + len;
        if &body[..4] == b"IEND" {
            break;
        }
    }
    assert_eq!(pos, bytes.len());
}

fn xmp_of(bytes: &[u8], format: image::ImageFormat) -> String {
    let xmp = match format {
        image::ImageFormat::Png => image::codecs::png::PngDecoder::new(Cursor::new(bytes))
            .unwrap()
            .xmp_metadata(),
        image::ImageFormat::Jpeg => image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes))
            .unwrap()
            .xmp_metadata(),
        _ => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
            .unwrap()
            .xmp_metadata(),
    };
    String::from_utf8(xmp.unwrap().expect("an XMP packet")).unwrap()
}

fn assert_decodes_like(embedded: &[u8], original: &[u8]) {
    let before = image::load_from_memory(original).unwrap();
    let after = image::load_from_memory(embedded).unwrap();
    assert_eq!(
        (after.width(), after.height()),
        (before.width(), before.height())
    );
    assert_eq!(after.to_rgba8(), before.to_rgba8(), "the pixels changed");
}

/// The escaped prompt and the other facts are in the packet.
fn assert_packet(xmp: &str) {
    assert!(
        xmp.contains("A lighthouse &lt;at&gt; dusk &amp; &quot;fog&quot;, café ☕"),
        "{xmp}"
    );
    for fact in [
        "<dc:description>",
        "<imagegen:model>mock-image-1</imagegen:model>",
        "<imagegen:provider>mock</imagegen:provider>",
        "<imagegen:revisedPrompt>A tall lighthouse at dusk</imagegen:revisedPrompt>",
        "<xmp:CreateDate>2026-12-01T22:00:00Z</xmp:CreateDate>",
        "imagegen://images/20261201-220000-a-lighthouse-0123abcd.png",
    ] {
        assert!(xmp.contains(fact), "{fact} missing from {xmp}");
    }
}

#[test]
fn a_png_gets_a_description_and_xmp_before_its_image_data_and_still_decodes() {
    let original = png();
    let done = embed(&original, ImageFormat::Png, &meta(PROMPT)).unwrap();
    assert!(!done.truncated);
    assert_png_crcs(&done.bytes);
    assert_decodes_like(&done.bytes, &original);
    let texts = png_texts(&done.bytes);
    assert!(
        texts.contains(&("Description".to_string(), PROMPT.to_string())),
        "{texts:?}"
    );
    assert_packet(&xmp_of(&done.bytes, image::ImageFormat::Png));
    assert!(done.note().contains("sha256 is the stored file's"));
}

#[test]
fn a_jpeg_gets_an_xmp_app1_after_its_jfif_segment_and_still_decodes() {
    let original = jpeg();
    let done = embed(&original, ImageFormat::Jpeg, &meta(PROMPT)).unwrap();
    assert_decodes_like(&done.bytes, &original);
    assert_packet(&xmp_of(&done.bytes, image::ImageFormat::Jpeg));
    // The new segment comes right after the leading APP0/APP1 ones.
    let mut pos = 2;
    while matches!(done.bytes[pos + 1], 0xE0 | 0xE1) {
        let payload = &done.bytes[pos + 4..];
        if done.bytes[pos + 1] == 0xE1 && payload.starts_with(JPEG_XMP_NAMESPACE) {
            return;
        }
        pos += 2 + u16::from_be_bytes([done.bytes[pos + 2], done.bytes[pos + 3]]) as usize;
    }
    panic!("no XMP segment among the leading APP segments");
}

#[test]
fn every_kind_of_webp_gets_an_xmp_chunk_a_vp8x_flag_and_a_right_riff_size() {
    for (what, original, alpha) in [
        ("lossless", webp_lossless(), true),
        ("lossy", webp_lossy(), false),
        ("extended", webp_extended(), true),
    ] {
        let done = embed(&original, ImageFormat::Webp, &meta(PROMPT)).unwrap();
        let bytes = &done.bytes;
        assert_eq!(le32(bytes, 4).unwrap() as usize, bytes.len() - 8, "{what}");
        assert_eq!(&bytes[12..16], b"VP8X", "{what}");
        let flags = bytes[20];
        assert_ne!(flags & VP8X_XMP_FLAG, 0, "{what}");
        assert_eq!(flags & VP8X_ALPHA_FLAG != 0, alpha, "{what}");
        assert_decodes_like(bytes, &original);
        assert_packet(&xmp_of(bytes, image::ImageFormat::WebP));
    }
}

#[test]
fn a_very_long_prompt_is_cut_on_a_character_boundary_to_fit_one_jpeg_segment() {
    let prompt = "é&<".repeat(40_000);
    let original = jpeg();
    let done = embed(&original, ImageFormat::Jpeg, &meta(&prompt)).unwrap();
    assert!(done.truncated);
    assert!(done.note().contains("truncated"), "{}", done.note());
    assert_decodes_like(&done.bytes, &original);
    let xmp = xmp_of(&done.bytes, image::ImageFormat::Jpeg);
    assert!(xmp.len() <= MAX_JPEG_PACKET);
    assert!(xmp.contains("é&amp;&lt;é"));
    let png = embed(&png(), ImageFormat::Png, &meta(&prompt)).unwrap();
    assert!(png.truncated);
    let texts = png_texts(&png.bytes);
    let description = &texts.iter().find(|(k, _)| k == "Description").unwrap().1;
    assert!(prompt.starts_with(description.as_str()));
    assert!(description.len() <= MAX_TEXT_BYTES);
}

#[test]
fn text_xml_cannot_hold_is_replaced_and_nul_never_reaches_a_png_text() {
    let (escaped, cut) = escape_bounded("a\u{1}b\u{ffff}c\td", 100);
    assert_eq!((escaped.as_str(), cut), ("a\u{fffd}b\u{fffd}c\td", false));
    assert_eq!(png_text_bounded("a\0b", 100), "ab");
    let done = embed(&png(), ImageFormat::Png, &meta("x\0y")).unwrap();
    assert!(png_texts(&done.bytes).contains(&("Description".into(), "xy".into())));
}

#[test]
fn gif_and_svg_are_skipped_for_their_format() {
    let gif = encoded(image::ImageFormat::Gif, true);
    for (bytes, format) in [
        (gif, ImageFormat::Gif),
        (b"<svg/>".to_vec(), ImageFormat::Svg),
    ] {
        let skipped = embed(&bytes, format, &meta(PROMPT)).unwrap_err();
        assert!(skipped.note().starts_with("metadata not embedded"));
        assert!(skipped.0.contains("format"), "{}", skipped.0);
    }
}

/// `png` with a chunk of `kind` holding `data` inserted before its first IDAT.
fn png_with_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let original = png();
    let ihdr_end = 8 + 12 + 13;
    let mut out = original[..ihdr_end].to_vec();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&original[ihdr_end..]);
    out
}

/// `jpeg` with a segment `marker` holding `payload` right after SOI.
fn jpeg_with_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let original = jpeg();
    let mut out = vec![0xFF, 0xD8, 0xFF, marker];
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&original[2..]);
    out
}

/// `webp` (extended) with a chunk `fourcc` holding `data` at the end.
fn webp_with_chunk(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = webp_extended();
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    let riff = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    out
}

#[test]
fn a_file_that_may_carry_a_c2pa_manifest_is_never_touched() {
    // The JUMBF boxes a manifest store is made of, without the `c2pa` label, so that each
    // container's own rule is what catches it.
    let jumbf = b"\0\0\0\x10jumb\0\0\0\x08jumd";
    let cases = [
        ("PNG caBX", png_with_chunk(b"caBX", jumbf), ImageFormat::Png),
        (
            "JPEG APP11",
            jpeg_with_segment(0xEB, b"JP\0\0\0\0\0\x01"),
            ImageFormat::Jpeg,
        ),
        (
            "WebP C2PA",
            webp_with_chunk(b"C2PA", jumbf),
            ImageFormat::Webp,
        ),
        (
            "c2pa label in a PNG text chunk",
            png_with_chunk(b"tEXt", b"Comment\0urn:c2pa:manifest"),
            ImageFormat::Png,
        ),
        (
            "c2pa label in a JPEG comment",
            jpeg_with_segment(0xFE, b"c2pa"),
            ImageFormat::Jpeg,
        ),
    ];
    for (what, bytes, format) in cases {
        image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{what}: bad fixture: {e}"));
        let skipped = embed(&bytes, format, &meta(PROMPT)).unwrap_err();
        assert!(skipped.0.contains("C2PA manifest"), "{what}: {}", skipped.0);
    }
}

#[test]
fn a_file_that_already_carries_xmp_is_left_alone() {
    let png = embed(&png(), ImageFormat::Png, &meta(PROMPT))
        .unwrap()
        .bytes;
    let jpeg = embed(&jpeg(), ImageFormat::Jpeg, &meta(PROMPT))
        .unwrap()
        .bytes;
    let webp = embed(&webp_lossy(), ImageFormat::Webp, &meta(PROMPT))
        .unwrap()
        .bytes;
    for (bytes, format) in [
        (png, ImageFormat::Png),
        (jpeg, ImageFormat::Jpeg),
        (webp, ImageFormat::Webp),
    ] {
        let skipped = embed(&bytes, format, &meta(PROMPT)).unwrap_err();
        assert!(skipped.0.contains("already carries XMP"), "{}", skipped.0);
    }
}

/// A small deterministic generator for garbage (no dependency, the same bytes every run).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

#[test]
fn truncated_corrupted_and_garbage_files_never_panic_and_truncations_are_refused() {
    let valid = [
        (png(), ImageFormat::Png),
        (jpeg(), ImageFormat::Jpeg),
        (webp_lossless(), ImageFormat::Webp),
        (webp_lossy(), ImageFormat::Webp),
        (webp_extended(), ImageFormat::Webp),
    ];
    for (bytes, format) in &valid {
        for cut in 0..bytes.len() {
            let outcome = embed(&bytes[..cut], *format, &meta(PROMPT));
            match format {
                // A JPEG cut inside its image data still has a whole header: embedding into
                // it is as good as the file; anything cut before the scan is refused.
                ImageFormat::Jpeg => {
                    if let Ok(done) = outcome {
                        assert!(done.bytes.starts_with(&[0xFF, 0xD8]));
                    }
                }
                _ => assert!(outcome.is_err(), "{format:?} cut at {cut} was embedded"),
            }
        }
        // One byte at a time set to each of a few telling values: lengths, markers, flags.
        for at in 0..bytes.len().min(400) {
            for value in [0x00, 0x01, 0x7F, 0xFF] {
                let mut broken = bytes.clone();
                broken[at] = value;
                let _ = embed(&broken, *format, &meta(PROMPT));
            }
        }
    }
    for seed in 0..200 {
        let noise = garbage(seed, (seed as usize * 37) % 3000);
        for (prefix, format) in [
            (PNG_SIGNATURE, ImageFormat::Png),
            (&[0xFF, 0xD8][..], ImageFormat::Jpeg),
            (&b"RIFF\0\0\0\0WEBP"[..], ImageFormat::Webp),
        ] {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&noise);
            let _ = embed(&bytes, format, &meta(PROMPT));
            let _ = embed(&noise, format, &meta(PROMPT));
        }
    }
}
