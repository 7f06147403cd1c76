//! Saving generated images under `output.dir` and serving them back as `imagegen://images/<name>`.
//!
//! Names are chosen here, never by the caller or the model: a timestamp, a slug of the prompt
//! and a content hash, claimed with `create_new` so nothing is ever overwritten.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use imagegen_providers::{GeneratedImage, ImageFormat};

use crate::config::files::{self, FileError};

pub mod index;
pub mod sidecar;

/// `ELOOP`: what opening a symbolic link with `O_NOFOLLOW` fails with on Linux.
const ELOOP: i32 = 40;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The URI prefix of stored images.
pub const IMAGE_URI_PREFIX: &str = "imagegen://images/";

/// An image saved on disk, as reported in tool results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoredImage {
    /// The file name under the output directory.
    pub name: String,
    /// Absolute path of the saved file.
    pub path: PathBuf,
    /// `imagegen://images/<name>`, readable with `resources/read`.
    pub uri: String,
    /// MIME type of the saved file.
    pub mime: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file's contents.
    pub sha256: String,
    /// Frames of an animated image (a GIF); absent for a still image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
}

/// One entry of the stored-image listing.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// The file name.
    pub name: String,
    /// MIME type from the extension.
    pub mime: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Last modification time.
    pub modified: std::time::SystemTime,
}

/// The directory images are saved in.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    /// `dir` resolved once it exists: resolving it for every save cost a `readlink` per path
    /// component on the call's critical path, and the name inside it is never a link.
    resolved: std::sync::Arc<std::sync::OnceLock<PathBuf>>,
}

/// Turns a prompt into a short, filesystem-safe slug.
fn slug(prompt: &str, max: usize) -> String {
    let mut out = String::new();
    for c in prompt.chars() {
        if out.len() >= max {
            break;
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "image".into()
    } else {
        out.into()
    }
}

/// The MIME type of a stored file, from its extension: every format a provider returns
/// (`.gif` is `image/gif`, `.svg` is `image/svg+xml`), and nothing else.
fn mime_for_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    ImageFormat::ALL
        .into_iter()
        .find(|f| f.extension() == ext || f.as_str() == ext)
        .map(ImageFormat::mime)
}

/// Whether `name` is one this store could have made: a plain file name, never a path.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
        && mime_for_name(name).is_some()
}

impl ImageStore {
    /// A store saving into `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            resolved: Default::default(),
        }
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves `image` under a fresh name derived from `prompt`; never overwrites a file.
    pub fn save(&self, image: &GeneratedImage, prompt: &str) -> io::Result<StoredImage> {
        fs::create_dir_all(&self.dir)?;
        let sha256 = hex(&image
            .sha256
            .unwrap_or_else(|| Sha256::digest(&image.bytes).into()));
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .map_err(io::Error::other)?;
        let base = format!("{stamp}-{}-{}", slug(prompt, 40), &sha256[..8]);
        let ext = image.format.extension();
        for attempt in 0u32..1000 {
            let name = match attempt {
                0 => format!("{base}.{ext}"),
                n => format!("{base}-{n}.{ext}"),
            };
            let path = self.dir.join(&name);
            let mut file = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            if let Err(e) = file.write_all(&image.bytes) {
                // A half-written image must not be served later as if it were whole.
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            // Written is readable by every process at once; on disk follows off the caller's
            // path, because an fdatasync was a third of the time a call spent in the server.
            sync_later(file, &path);
            return Ok(StoredImage {
                uri: format!("{IMAGE_URI_PREFIX}{name}"),
                path: self.resolved_path(&name).unwrap_or(path),
                name,
                mime: image.mime().into(),
                width: image.width,
                height: image.height,
                bytes: image.bytes.len() as u64,
                sha256,
                frames: (image.frames > 1).then_some(image.frames),
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free file name for {base}.{ext}"),
        ))
    }

    /// The absolute path of `name` in the directory, symbolic links resolved (`None` if the
    /// directory cannot be resolved).
    fn resolved_path(&self, name: &str) -> Option<PathBuf> {
        if let Some(dir) = self.resolved.get() {
            return Some(dir.join(name));
        }
        let dir = self.dir.canonicalize().ok()?;
        Some(self.resolved.get_or_init(|| dir).join(name))
    }

    /// Deletes the stored image `name` (a partial image of a cancelled call).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        if !is_valid_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an image name",
            ));
        }
        fs::remove_file(self.dir.join(name))
    }

    /// The name in an `imagegen://images/<name>` URI, if the URI is one of ours and well formed.
    pub fn name_from_uri(uri: &str) -> Option<&str> {
        uri.strip_prefix(IMAGE_URI_PREFIX)
            .filter(|name| is_valid_name(name))
    }

    /// Reads a stored image by name, with its MIME type.
    ///
    /// Only a regular file that sits in the directory itself is served: a symbolic link (to
    /// `/proc/self/environ`, say), a FIFO or a device under an image name is refused, and so is
    /// a file over `cap` bytes. The file is opened once and checked through its handle.
    pub fn read(&self, name: &str, cap: u64) -> io::Result<(Vec<u8>, &'static str)> {
        let mime = mime_for_name(name)
            .filter(|_| is_valid_name(name))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an image name"))?;
        let refused = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let (file, len) =
            files::open_regular(&self.dir.join(name), false).map_err(|e| match e {
                FileError::Io(e) if e.raw_os_error() == Some(ELOOP) => {
                    refused("it is a symbolic link, which the store never makes".into())
                }
                FileError::Io(e) => e,
                FileError::NotRegular => refused("it is not a regular file".into()),
                FileError::TooLarge(n) => refused(format!("it is too large ({n} bytes)")),
            })?;
        if len > cap {
            return Err(refused(format!(
                "it is {len} bytes, more than output.max_read_mb allows ({cap} bytes); read the file at its path instead"
            )));
        }
        let bytes = files::read_capped(file, cap).map_err(|e| match e {
            FileError::Io(e) => e,
            other => refused(format!("it {other}")),
        })?;
        Ok((bytes, mime))
    }

    /// Every stored image, newest first. A missing directory is an empty listing.
    pub fn list(&self) -> io::Result<Vec<StoredEntry>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let meta = entry.metadata()?;
            if !meta.is_file() || !is_valid_name(&name) {
                continue;
            }
            out.push(StoredEntry {
                mime: mime_for_name(&name).unwrap_or("application/octet-stream"),
                bytes: meta.len(),
                modified: meta.modified()?,
                name,
            });
        }
        out.sort_by(|a, b| {
            b.modified
                .cmp(&a.modified)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }
}

/// Work for the thread that puts saved images on disk.
enum SyncJob {
    /// Flush this file's data.
    File(fs::File, PathBuf),
    /// Answer once every earlier file is flushed.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The queue of the thread that puts saved files on disk, one at a time, in saving order.
static SYNCER: std::sync::OnceLock<std::sync::mpsc::SyncSender<SyncJob>> =
    std::sync::OnceLock::new();

fn syncer() -> &'static std::sync::mpsc::SyncSender<SyncJob> {
    SYNCER.get_or_init(|| {
        // Bounded, so a disk that cannot keep up slows saving instead of piling up open files.
        let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(256);
        let spawned = std::thread::Builder::new()
            .name("imagegen-sync".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        SyncJob::File(file, path) => sync_now(&file, &path),
                        SyncJob::Flush(done) => drop(done.send(())),
                    }
                }
            });
        // Without the thread the queue is closed, and `sync_later` flushes in place.
        if let Err(e) = spawned {
            tracing::warn!("no thread to flush saved images in the background: {e}");
        }
        tx
    })
}

fn sync_now(file: &fs::File, path: &Path) {
    if let Err(e) = file.sync_data() {
        tracing::warn!(path = %path.display(), "cannot flush a saved image to disk: {e}");
    }
}

fn sync_later(file: fs::File, path: &Path) {
    if let Err(std::sync::mpsc::SendError(SyncJob::File(file, path))) =
        syncer().send(SyncJob::File(file, path.to_path_buf()))
    {
        sync_now(&file, &path);
    }
}

/// Waits until every image saved so far is on disk: before the process exits.
pub fn flush_saved() {
    let (done, wait) = std::sync::mpsc::channel();
    if SYNCER
        .get()
        .is_some_and(|tx| tx.send(SyncJob::Flush(done)).is_ok())
    {
        let _ = wait.recv();
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn png() -> GeneratedImage {
        let img = image::RgbaImage::from_pixel(4, 3, image::Rgba([1, 2, 3, 255]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        GeneratedImage::from_encoded(Bytes::from(buf.into_inner())).unwrap()
    }

    #[test]
    fn saves_never_overwrite_and_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("nested"));
        let img = png();
        let a = store.save(&img, "A lighthouse, at dusk!").unwrap();
        let b = store.save(&img, "A lighthouse, at dusk!").unwrap();
        assert_ne!(a.name, b.name);
        assert!(a.name.contains("a-lighthouse-at-dusk"), "{}", a.name);
        assert_eq!((a.width, a.height, a.mime.as_str()), (4, 3, "image/png"));
        let (bytes, mime) = store.read(&a.name, u64::MAX).unwrap();
        assert_eq!((bytes.as_slice(), mime), (&img.bytes[..], "image/png"));
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(ImageStore::name_from_uri(&a.uri), Some(a.name.as_str()));
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in [
            "../x.png",
            "a/b.png",
            ".hidden.png",
            "x.txt",
            "..png",
            "a\\b.png",
            "",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(ImageStore::name_from_uri("imagegen://images/../../etc/passwd").is_none());
        let store = ImageStore::new("/tmp");
        assert!(store.read("../etc/passwd", u64::MAX).is_err());
    }

    #[test]
    fn saved_images_are_flushed_before_exit() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let saved: Vec<_> = (0..20).map(|_| store.save(&png(), "x").unwrap()).collect();
        flush_saved();
        for image in saved {
            assert_eq!(
                store.read(&image.name, u64::MAX).unwrap().0.len() as u64,
                image.bytes
            );
        }
    }

    #[test]
    fn slugs_are_short_and_safe() {
        assert_eq!(slug("   ", 40), "image");
        assert_eq!(slug("Ünïcode & ../../etc", 40), "n-code-etc");
        assert!(slug(&"word ".repeat(50), 40).len() <= 41);
    }

    #[test]
    fn gifs_and_svgs_keep_their_extension_mime_bytes_and_frame_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let mut gif = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
            for shade in [0u8, 200] {
                let frame = image::RgbaImage::from_pixel(6, 4, image::Rgba([shade, 0, 0, 255]));
                encoder.encode_frame(image::Frame::new(frame)).unwrap();
            }
        }
        let gif = GeneratedImage::from_encoded(Bytes::from(gif)).unwrap();
        let svg = GeneratedImage::from_encoded(Bytes::from_static(
            b"<svg xmlns='http://www.w3.org/2000/svg' width='30' height='20'><rect width='30' height='20'/></svg>",
        ))
        .unwrap();
        for (image, ext, mime, frames) in [
            (&gif, ".gif", "image/gif", Some(2)),
            (&svg, ".svg", "image/svg+xml", None),
            (&png(), ".png", "image/png", None),
        ] {
            let saved = store.save(image, "moving picture").unwrap();
            assert!(saved.name.ends_with(ext), "{}", saved.name);
            assert_eq!((saved.mime.as_str(), saved.frames), (mime, frames));
            assert_eq!((saved.width, saved.height), (image.width, image.height));
            let (bytes, read_mime) = store.read(&saved.name, u64::MAX).unwrap();
            assert_eq!((bytes.as_slice(), read_mime), (&image.bytes[..], mime));
            let listed = store.list().unwrap();
            let entry = listed.iter().find(|e| e.name == saved.name).unwrap();
            assert_eq!(entry.mime, mime);
            let json = serde_json::to_value(&saved).unwrap();
            assert_eq!(
                json.get("frames").and_then(|f| f.as_u64()),
                frames.map(u64::from)
            );
            assert_eq!(
                json.get("frames").is_some(),
                frames.is_some(),
                "absent when still"
            );
        }
    }
}
