//! Thumbnails for the gallery: made once per image from the stored file and kept in a
//! process-wide cache bounded in bytes (oldest out first), since stored images never change.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, OnceLock},
};

use bytes::Bytes;
use imagegen_providers::{GeneratedImage, ImageFormat};

use crate::storage::{Store, StoreError, Viewer};

/// Why no thumbnail was served.
#[derive(Debug)]
pub enum ThumbError {
    /// The store refused or failed (no such image of the viewer's, ...).
    Store(StoreError),
    /// The image could not be decoded or resized.
    Failed(String),
}

impl From<StoreError> for ThumbError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The longer side of a thumbnail, pixels.
pub const SIDE: u32 = 256;

/// The most bytes of thumbnails kept.
const CACHE_BYTES: usize = 32 << 20;

/// The largest stored image a thumbnail is made from.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

/// A thumbnail: its bytes and MIME type.
#[derive(Debug, Clone)]
pub struct Thumb {
    /// The encoded thumbnail.
    pub bytes: Bytes,
    /// `image/jpeg` or `image/png`.
    pub mime: &'static str,
}

#[derive(Default)]
struct Cache {
    /// Keyed by store location and image name (names are never reused for other bytes).
    thumbs: HashMap<String, Thumb>,
    order: VecDeque<String>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The thumbnail of image `name`, if `viewer` may see it: from the cache, else made now from
/// the stored file (off the async workers) and cached.
pub async fn thumbnail(store: &Store, name: &str, viewer: &Viewer) -> Result<Thumb, ThumbError> {
    // Whether the caller may see it is checked on every request, cached or not.
    let sidecar = store.sidecar(name, viewer).await?;
    let key = format!("{}\0{name}", store.shown());
    if let Some(hit) = cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .thumbs
        .get(&key)
    {
        return Ok(hit.clone());
    }
    let (bytes, mime) = store.read(name, MAX_SOURCE_BYTES, viewer).await?;
    let format = ImageFormat::ALL
        .into_iter()
        .find(|f| f.mime() == mime)
        .unwrap_or(ImageFormat::Png);
    let mut image = GeneratedImage::new(bytes, format, sidecar.width, sidecar.height);
    image.frames = sidecar.frames.unwrap_or(1);
    let made = tokio::task::spawn_blocking(move || crate::delivery::thumbnail(&image, SIDE))
        .await
        .map_err(|e| ThumbError::Failed(format!("making a thumbnail failed: {e}")))?
        .map_err(ThumbError::Failed)?;
    let thumb = Thumb {
        bytes: Bytes::from(made.0),
        mime: made.1,
    };
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if !cache.thumbs.contains_key(&key) {
        cache.bytes += thumb.bytes.len();
        cache.thumbs.insert(key.clone(), thumb.clone());
        cache.order.push_back(key);
        while cache.bytes > CACHE_BYTES {
            let Some(old) = cache.order.pop_front() else {
                break;
            };
            if let Some(gone) = cache.thumbs.remove(&old) {
                cache.bytes -= gone.bytes.len();
            }
        }
    }
    Ok(thumb)
}

/// Whether the thumbnail cache holds image `name` of `store` (for tests).
pub fn is_cached(store: &Store, name: &str) -> bool {
    let key = format!("{}\0{name}", store.shown());
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .thumbs
        .contains_key(&key)
}
