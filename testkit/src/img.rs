//! Real images for fixtures: PNG and JPEG files of a given size, and base64 helpers.

use std::io::Cursor;

use base64::Engine as _;

/// A PNG `width`x`height` of one RGBA colour.
pub fn png_rgba(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            width,
            height,
            image::Rgba(rgba),
        )),
        image::ImageFormat::Png,
    )
}

/// A PNG `width`x`height` of an opaque blue.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    png_rgba(width, height, [30, 90, 200, 255])
}

/// A PNG `width`x`height` of RGB that compresses about as badly as a generated picture: smooth
/// colour fields plus `noise_bits` (1 to 8) of pseudo-random noise per channel; 3 bits make
/// a 1024x1024 image of about 1.6 MB.
pub fn photo_like_png(width: u32, height: u32, noise_bits: u32) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mask = ((1u16 << noise_bits.clamp(1, 8)) - 1) as u8;
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        // xorshift64: cheap, deterministic, and incompressible enough.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = state.to_le_bytes();
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let base = [
            (fx * 180.0 + 40.0 * (fy * 9.0).sin()) as u8,
            (fy * 160.0 + 50.0 * (fx * 7.0).cos()) as u8,
            ((fx + fy) * 90.0) as u8,
        ];
        image::Rgb(std::array::from_fn(|c| base[c].wrapping_add(n[c] & mask)))
    });
    encode(image::DynamicImage::ImageRgb8(img), image::ImageFormat::Png)
}

/// A JPEG `width`x`height` of an opaque blue (JPEG has no alpha).
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            width,
            height,
            image::Rgb([30, 90, 200]),
        )),
        image::ImageFormat::Jpeg,
    )
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .expect("encoding to memory cannot fail");
    out.into_inner()
}

/// The width and height of a PNG, from its header; `None` when `bytes` is not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.len() < 24 {
        return None;
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((word(16), word(20)))
}

/// Standard base64 of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64, panicking on bad input (this is for tests).
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_make_decodable_images_of_the_asked_size() {
        let p = png(7, 3);
        assert_eq!(png_size(&p), Some((7, 3)));
        assert_eq!(image::load_from_memory(&p).unwrap().width(), 7);
        let j = jpeg(5, 4);
        assert!(j.starts_with(&[0xFF, 0xD8]));
        assert_eq!(image::load_from_memory(&j).unwrap().height(), 4);
        assert_eq!(unb64(&b64(&p)), p);
        assert_eq!(png_size(b"not a png"), None);
    }
}
