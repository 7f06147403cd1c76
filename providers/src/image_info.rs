//! Reading an encoded image's format and size without decoding its pixels.

use std::io::Cursor;

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
}

/// Reads the header of a PNG, JPEG or WebP image; anything else is an error.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, String> {
    let format = ImageFormat::sniff(bytes)
        .ok_or_else(|| "the data is not a PNG, JPEG or WebP image".to_string())?;
    let image_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Webp => image::ImageFormat::WebP,
    };
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), image_format)
        .into_dimensions()
        .map_err(|e| format!("unreadable {format} image: {e}"))?;
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}
