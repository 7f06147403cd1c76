//! Reading an encoded image's format and size without decoding its pixels.
//!
//! Input images arrive from users and may be anything; these functions read only headers, so
//! checking a 50 MB upload costs next to nothing and a hostile header cannot make us allocate.

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

/// Recognises PNG, JPEG or WebP from the first bytes of an encoded image.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    ImageFormat::sniff(bytes)
}

/// The width and height of a PNG, JPEG or WebP image, read from its header.
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
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, String> {
    let format = sniff(bytes)
        .ok_or_else(|| "the data is not a PNG, JPEG, WebP, GIF or SVG image".to_string())?;
    let Some(raster) = to_image_format(format) else {
        return Err(format!("cannot read {format} images yet"));
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
}
