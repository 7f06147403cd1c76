//! The image store: generated images and their JSON sidecars, in the local `output.dir` or in
//! an object store (`storage.url`), served back as `imagegen://images/<name>`.
//!
//! Names are chosen here: a timestamp, a slug of the prompt and a content hash, or the
//! sanitised `filename` a caller asked for ([`filename`]); either is claimed with
//! `PutMode::Create` so nothing is ever overwritten. The
//! image is written first, then its sidecar; an image is visible (listed, readable) only once
//! its sidecar exists, and a save that fails deletes what it wrote.
//!
//! Every write goes through object_store; the engine never knows which backend it has. The
//! local store keeps its files flat in `output.dir` (so paths and `imagegen://` inputs stay as
//! they were) and reads them itself, refusing links and special files; an object store keys
//! them under a date prefix (`PREFIX/images/2026/12/01/NAME`) so a day's listing stays cheap.

use std::{
    collections::HashSet,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use imagegen_providers::{GeneratedImage, ImageFormat, Usage};
use object_store::{
    local::LocalFileSystem, path::Path as ObjectPath, ObjectStore, ObjectStoreExt as _, PutMode,
    PutOptions, PutPayload,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{
    files::{self, FileError},
    StorageConfig,
};

pub mod embed;
pub mod filename;
pub mod index;
mod open;
pub mod retention;
pub mod sidecar;

use sidecar::{sidecar_name, Sidecar, SIDECAR_SUFFIX, SIDECAR_VERSION};

/// `ELOOP`: what opening a symbolic link with `O_NOFOLLOW` fails with on Linux.
const ELOOP: i32 = 40;

/// The URI prefix of stored images.
pub const IMAGE_URI_PREFIX: &str = "imagegen://images/";

/// The suffix of a sidecar's URI (`imagegen://images/{name}/meta`).
pub const META_URI_SUFFIX: &str = "/meta";

/// The largest sidecar read back: far above any the server writes.
const MAX_SIDECAR_BYTES: u64 = 1_000_000;

/// The most images one listing page holds, whatever the caller asks.
pub const MAX_PAGE: usize = 100;

/// An image saved in the store, as reported in tool results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoredImage {
    /// The image's name in the store.
    pub name: String,
    /// Absolute path of the saved file; only for the local store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
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
    /// Hex SHA-256 of the stored file's contents (the provider's bytes unless
    /// `output.embed_metadata` wrote into them).
    pub sha256: String,
    /// Frames of an animated image (a GIF); absent for a still image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
}

/// How an image was made: everything its sidecar records beside the image's own facts.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The HTTP caller (token name or OAuth subject); `None` over stdio and the CLI.
    pub caller: Option<String>,
    /// The tool or command that made it.
    pub tool: Option<String>,
    /// The prompt as the caller gave it.
    pub prompt: String,
    /// What the name's slug is made from when not the prompt (`partial 1 ...`, `variation`).
    pub name_hint: Option<String>,
    /// The prompt as sent upstream.
    pub prompt_sent: Option<String>,
    /// The prompt preset the call named (`[presets.NAME]`).
    pub preset: Option<String>,
    /// The prompt as the provider rewrote it.
    pub revised_prompt: Option<String>,
    /// The provider's configured name.
    pub provider: Option<String>,
    /// The model that served the request.
    pub model: Option<String>,
    /// The parameters as sent upstream.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Token usage.
    pub usage: Option<Usage>,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// The input images of an edit, as URIs or file names.
    pub inputs: Vec<String>,
    /// What a reader of the sidecar should know.
    pub notes: Vec<String>,
    /// Write the prompt into the file itself (`output.embed_metadata`; see [`embed`]).
    pub embed_metadata: bool,
    /// The file name the caller asked for (`filename`), honoured inside the store only.
    pub filename: Option<String>,
}

/// Whose images a request may see: over HTTP a caller sees their own, unless the store is
/// shared or the caller is an admin; over stdio there is one user and everything is theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Viewer {
    /// Sees every image.
    #[default]
    Everyone,
    /// Sees only the images whose sidecar names this caller.
    Caller(String),
}

impl Viewer {
    /// Whether an image with `sidecar` (none: an image saved before sidecars) is visible.
    fn sees(&self, sidecar: Option<&Sidecar>) -> bool {
        match self {
            Self::Everyone => true,
            Self::Caller(me) => sidecar.and_then(|s| s.caller.as_deref()) == Some(me.as_str()),
        }
    }

    /// Whether seeing needs the sidecar's contents, not only its existence.
    fn filters(&self) -> bool {
        matches!(self, Self::Caller(_))
    }
}

/// Why a store operation failed; every message names the store, never its credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What happened.
    pub kind: StoreErrorKind,
    /// For people: what, where, and what to do.
    pub message: String,
}

/// The kinds of [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No such image (or not one this viewer may see).
    NotFound,
    /// The request itself is wrong: a bad name or cursor, a file the store never makes, too large.
    Refused,
    /// The store failed: unreachable, full, denied.
    Failed,
}

impl StoreError {
    fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn not_found(name: &str) -> Self {
        Self::new(
            StoreErrorKind::NotFound,
            format!("no stored image `{name}`"),
        )
    }

    fn refused(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Refused, message)
    }
}

/// One visible image of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedImage {
    /// The image's name.
    pub name: String,
    /// MIME type from the extension.
    pub mime: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// When it was stored.
    pub modified: SystemTime,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The images of this page.
    pub images: Vec<ListedImage>,
    /// The opaque cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// A file or object under the store's root, before visibility is decided.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    bytes: u64,
    modified: SystemTime,
}

/// Where the store keeps its images.
enum Backend {
    /// Files flat in a directory; written through object_store's `LocalFileSystem`.
    Local {
        dir: PathBuf,
        /// `dir` resolved once it exists: resolving it for every save cost a `readlink` per
        /// path component on the call's critical path, and the name inside it is never a link.
        resolved: OnceLock<PathBuf>,
        /// The writer, made on first save: `LocalFileSystem` needs the directory to exist,
        /// and the directory is made only when there is something to put in it.
        writer: OnceLock<Arc<dyn ObjectStore>>,
    },
    /// An object store, with images under `root/YYYY/MM/DD/` and cache entries under `cache`.
    Object {
        store: Arc<dyn ObjectStore>,
        root: ObjectPath,
        cache: ObjectPath,
        /// The replicas' usage ledgers, `usage/YYYY-MM-DD/REPLICA.jsonl`.
        usage: ObjectPath,
        /// MCP tasks' records, `tasks/ID.json`.
        tasks: ObjectPath,
    },
}

struct Inner {
    backend: Backend,
    /// The directory or `scheme://bucket/prefix`: what errors show.
    shown: String,
}

/// The image store; cheap to clone (clones share one backend).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The name the code base used before the store had backends.
pub type ImageStore = Store;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the backend's own Debug: it holds the client's configuration.
        f.debug_tuple("Store").field(&self.inner.shown).finish()
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.shown)
    }
}

/// When this process first made a store: a local image without a sidecar that is older was
/// saved before sidecars existed and stays visible; a newer one is a save still in progress.
fn process_start() -> SystemTime {
    static START: OnceLock<SystemTime> = OnceLock::new();
    *START.get_or_init(SystemTime::now)
}

/// Tells every listener that the listing changed (an image stored or deleted).
fn changes_sender() -> &'static tokio::sync::broadcast::Sender<()> {
    static CHANGES: OnceLock<tokio::sync::broadcast::Sender<()>> = OnceLock::new();
    CHANGES.get_or_init(|| tokio::sync::broadcast::channel(16).0)
}

/// A receiver that hears of every change to the listing made by this process.
pub fn subscribe_changes() -> tokio::sync::broadcast::Receiver<()> {
    changes_sender().subscribe()
}

/// How long after a change further ones are gathered into the same notification: a burst of
/// images (a batch, 64 clients at once) is one list change to each session, not one per image
/// per session.
const CHANGE_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// Waits for the next change to the listing and the rest of its burst ([`CHANGE_WINDOW`]);
/// `false` once no change can come any more.
pub async fn next_change(changes: &mut tokio::sync::broadcast::Receiver<()>) -> bool {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    if matches!(changes.recv().await, Err(RecvError::Closed)) {
        return false;
    }
    tokio::time::sleep(CHANGE_WINDOW).await;
    // A receiver that fell behind has missed changes, which is still just "changed".
    while !matches!(
        changes.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
    true
}

fn announce_change() {
    // No listener is fine.
    let _ = changes_sender().send(());
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
        && !name.contains(['/', '\\', '\0', '#'])
        && !name.contains("..")
        && mime_for_name(name).is_some()
}

/// The image name of a sidecar's name, when it is one.
fn image_of_sidecar(name: &str) -> Option<&str> {
    name.strip_suffix(SIDECAR_SUFFIX)
        .filter(|n| is_valid_name(n))
}

/// The `YYYY/MM/DD` a name made by [`Store::save`] starts with (`20261201-101500-...`).
///
/// Only the whole stamp counts, so a name a caller chose (`filename`) that merely starts with
/// digits (`12345678.png`) is keyed flat under the root: either way the key follows from the
/// name alone.
fn date_parts(name: &str) -> Option<[&str; 3]> {
    let stamp = name.get(..16)?.as_bytes();
    let digits = |range: std::ops::Range<usize>| stamp[range].iter().all(u8::is_ascii_digit);
    (digits(0..8) && stamp[8] == b'-' && digits(9..15) && stamp[15] == b'-')
        .then(|| [&name[..4], &name[4..6], &name[6..8]])
}

/// A cursor: where the previous page ended, in listing order.
fn encode_cursor(entry: &Entry) -> String {
    let nanos = entry
        .modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{nanos}:{}", entry.name))
}

fn decode_cursor(cursor: &str) -> Option<(u128, String)> {
    if cursor.len() > 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (nanos, name) = text.split_once(':')?;
    Some((nanos.parse().ok()?, name.to_string()))
}

impl Store {
    /// The local store saving into `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let shown = dir.display().to_string();
        Self::build(
            Backend::Local {
                dir,
                resolved: OnceLock::new(),
                writer: OnceLock::new(),
            },
            shown,
        )
    }

    /// A store in process memory (tests).
    pub fn memory() -> Self {
        Self::over(Arc::new(object_store::memory::InMemory::new()), "memory://")
    }

    /// A store over any object store (tests wrap one to inject failures); `shown` is what
    /// errors name it.
    pub fn over(store: Arc<dyn ObjectStore>, shown: &str) -> Self {
        Self::build(
            Backend::Object {
                store,
                root: ObjectPath::from("images"),
                cache: ObjectPath::from("cache"),
                usage: ObjectPath::from("usage"),
                tasks: ObjectPath::from("tasks"),
            },
            shown.to_string(),
        )
    }

    /// The local store in `dir`, writing through `writer` (tests wrap one to inject failures).
    pub fn local_over(dir: impl Into<PathBuf>, writer: Arc<dyn ObjectStore>) -> Self {
        let store = Self::new(dir);
        if let Backend::Local { writer: slot, .. } = &store.inner.backend {
            let _ = slot.set(writer);
        }
        store
    }

    /// The store `[storage]` names: `storage.url`'s object store, else `output_dir`.
    pub fn from_config(output_dir: &Path, config: &StorageConfig) -> Result<Self, StoreError> {
        let Some(url) = config.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(Self::new(output_dir));
        };
        let opened = open::open(url.trim(), &config.options)
            .map_err(|e| StoreError::new(StoreErrorKind::Refused, e))?;
        let under = |dir: &str| match opened.prefix.as_ref().is_empty() {
            true => ObjectPath::from(dir),
            false => opened.prefix.clone().join(dir),
        };
        Ok(Self::build(
            Backend::Object {
                store: opened.store.clone(),
                root: under("images"),
                cache: under("cache"),
                usage: under("usage"),
                tasks: under("tasks"),
            },
            opened.shown,
        ))
    }

    fn build(backend: Backend, shown: String) -> Self {
        process_start();
        Self {
            inner: Arc::new(Inner { backend, shown }),
        }
    }

    /// The directory of the local store; `None` for an object store.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Local { dir, .. } => Some(dir),
            Backend::Object { .. } => None,
        }
    }

    /// The store as shown in messages (its directory or URL, no credentials): a key for what
    /// is cached per store.
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    /// Whether images are files on this machine (results then carry their paths).
    pub fn is_local(&self) -> bool {
        self.local_dir().is_some()
    }

    fn failed(&self, doing: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::new(
            StoreErrorKind::Failed,
            format!("the image store {} failed {doing}: {e}", self.inner.shown),
        )
    }

    /// The writer and the key of `name` in it.
    fn writer(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        match &self.inner.backend {
            Backend::Object { store, .. } => Ok(store.clone()),
            Backend::Local { dir, writer, .. } => {
                if let Some(w) = writer.get() {
                    return Ok(w.clone());
                }
                fs::create_dir_all(dir).map_err(|e| self.failed("creating the directory", e))?;
                let made = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| self.failed("opening the directory", e))?;
                Ok(writer.get_or_init(|| Arc::new(made)).clone())
            }
        }
    }

    /// The key of image (or sidecar) `name`: flat in the local directory, under the date
    /// the name starts with in an object store.
    fn key(&self, name: &str) -> ObjectPath {
        match &self.inner.backend {
            Backend::Local { .. } => ObjectPath::from(name),
            Backend::Object { root, .. } => match date_parts(name) {
                Some([y, m, d]) => root.clone().join(y).join(m).join(d).join(name),
                None => root.clone().join(name),
            },
        }
    }

    /// The absolute path of `name` in the local directory, symbolic links resolved.
    fn resolved_path(&self, name: &str) -> Option<PathBuf> {
        let Backend::Local { dir, resolved, .. } = &self.inner.backend else {
            return None;
        };
        if let Some(dir) = resolved.get() {
            return Some(dir.join(name));
        }
        match dir.canonicalize() {
            Ok(real) => Some(resolved.get_or_init(|| real).join(name)),
            Err(_) => Some(dir.join(name)),
        }
    }

    /// Saves `image` under a fresh name derived from `how.prompt`, then its sidecar; never
    /// overwrites anything, and leaves nothing behind when it fails.
    pub async fn save(
        &self,
        image: &GeneratedImage,
        how: &Provenance,
    ) -> Result<StoredImage, StoreError> {
        let writer = self.writer()?;
        let sha256 = hex(&image
            .sha256
            .unwrap_or_else(|| Sha256::digest(&image.bytes).into()));
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .map_err(|e| self.failed("naming the image", e))?;
        let created = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| self.failed("naming the image", e))?;
        let ext = image.format.extension();
        let naming = Naming::of(how, &stamp, &sha256);
        let base = &naming.base;
        let create = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        for attempt in naming.first..naming.first + 1000 {
            let name = naming.candidate(attempt, ext);
            if let Backend::Local { dir, .. } = &self.inner.backend {
                // A taken name costs a stat here, not a whole write of the image.
                if fs::symlink_metadata(dir.join(&name)).is_ok() {
                    continue;
                }
            }
            let uri = format!("{IMAGE_URI_PREFIX}{name}");
            // Off by default, and then the provider's bytes go out untouched and unparsed.
            let embedding = how
                .embed_metadata
                .then(|| embed_into(image, how, &created, &uri));
            let (bytes, stored_sha256, note) = match embedding {
                None => (image.bytes.clone(), sha256.clone(), None),
                Some(Ok(embedded)) => {
                    let note = embedded.note();
                    let bytes = Bytes::from(embedded.bytes);
                    let stored_sha256 = hex(&Sha256::digest(&bytes));
                    (bytes, stored_sha256, Some(note))
                }
                Some(Err(skipped)) => (image.bytes.clone(), sha256.clone(), Some(skipped.note())),
            };
            let key = self.key(&name);
            match writer
                .put_opts(&key, PutPayload::from(bytes.clone()), create())
                .await
            {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(self.failed("saving an image", e)),
            }
            let stored = StoredImage {
                uri,
                path: self.resolved_path(&name),
                mime: image.mime().into(),
                width: image.width,
                height: image.height,
                bytes: bytes.len() as u64,
                sha256: stored_sha256,
                frames: (image.frames > 1).then_some(image.frames),
                name,
            };
            let mut sidecar = sidecar_of(&stored, how, created.clone());
            if stored.sha256 != sha256 {
                sidecar.upstream_sha256 = Some(sha256.clone());
            }
            sidecar.notes.extend(note);
            let sidecar_key = self.key(&sidecar_name(&stored.name));
            let written = match serde_json::to_vec_pretty(&sidecar) {
                Ok(json) => writer
                    .put_opts(&sidecar_key, PutPayload::from(json), create())
                    .await
                    .map_err(|e| self.failed("saving an image's sidecar", e)),
                Err(e) => Err(self.failed("writing an image's sidecar", e)),
            };
            if let Err(e) = written {
                // Without its sidecar the image would never be visible: an orphan.
                if let Err(cleanup) = writer.delete(&key).await {
                    tracing::warn!(name = %stored.name, "cannot remove an image whose sidecar failed: {cleanup}");
                }
                return Err(e);
            }
            if let Some(path) = &stored.path {
                // Written is readable by every process at once; on disk follows off the
                // caller's path, because an fdatasync was a third of a call's server time.
                sync_later(path.clone());
                sync_later(path.with_file_name(sidecar_name(&stored.name)));
            }
            announce_change();
            return Ok(stored);
        }
        Err(self.failed("saving an image", format!("no free name for {base}.{ext}")))
    }

    /// The tool-result facts of the image `sidecar` describes.
    pub fn stored_of(&self, sidecar: &Sidecar) -> StoredImage {
        StoredImage {
            uri: format!("{IMAGE_URI_PREFIX}{}", sidecar.name),
            path: self.resolved_path(&sidecar.name),
            mime: sidecar.mime.clone(),
            width: sidecar.width,
            height: sidecar.height,
            bytes: sidecar.bytes,
            sha256: sidecar.sha256.clone(),
            frames: sidecar.frames,
            name: sidecar.name.clone(),
        }
    }

    /// Where cache entry `key` lives: `cache/KEY.json` beside the images (in the local
    /// directory, or beside `images/` in the bucket), so every replica sharing the store finds it.
    fn cache_key(&self, key: &str) -> ObjectPath {
        let file = format!("{key}.json");
        match &self.inner.backend {
            Backend::Local { .. } => ObjectPath::from("cache").join(file.as_str()),
            Backend::Object { cache, .. } => cache.clone().join(file.as_str()),
        }
    }

    /// The cache entry stored under `key` (at most `cap` bytes), or `None` when there is none.
    pub async fn cache_entry(&self, key: &str, cap: u64) -> Result<Option<Bytes>, StoreError> {
        let store = self.writer()?;
        match self
            .read_object(&store, &self.cache_key(key), key, cap)
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores (or replaces) the cache entry `key`.
    pub async fn put_cache_entry(&self, key: &str, json: Vec<u8>) -> Result<(), StoreError> {
        self.writer()?
            .put(&self.cache_key(key), PutPayload::from(json))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("saving a cache entry", e))
    }

    /// Where task `id`'s record lives: `tasks/ID.json` beside the images, so every replica
    /// sharing the store finds it.
    fn task_key(&self, id: &str) -> ObjectPath {
        self.tasks_dir().join(format!("{id}.json").as_str())
    }

    fn tasks_dir(&self) -> ObjectPath {
        match &self.inner.backend {
            Backend::Local { .. } => ObjectPath::from("tasks"),
            Backend::Object { tasks, .. } => tasks.clone(),
        }
    }

    /// Stores (or replaces) the record of MCP task `id`.
    pub async fn put_task(&self, id: &str, json: Vec<u8>) -> Result<(), StoreError> {
        self.writer()?
            .put(&self.task_key(id), PutPayload::from(json))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("saving a task", e))
    }

    /// The record of MCP task `id` (at most `cap` bytes), or `None` when there is none.
    pub async fn task_record(&self, id: &str, cap: u64) -> Result<Option<Bytes>, StoreError> {
        let store = self.writer()?;
        match self.read_object(&store, &self.task_key(id), id, cap).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the record of MCP task `id` (an expired one).
    pub async fn remove_task(&self, id: &str) -> Result<(), StoreError> {
        match self.writer()?.delete(&self.task_key(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("deleting a task", e)),
        }
    }

    /// Deletes the task records last written more than `age` ago (every one of them has
    /// expired: a record's expiry is its creation plus the TTL), returning how many went.
    pub async fn prune_tasks(&self, age: std::time::Duration) -> Result<usize, StoreError> {
        let store = self.writer()?;
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let listed: Vec<object_store::ObjectMeta> =
            match store.list(Some(&self.tasks_dir())).try_collect().await {
                Ok(listed) => listed,
                Err(object_store::Error::NotFound { .. }) => return Ok(0),
                Err(e) => return Err(self.failed("listing the tasks", e)),
            };
        let mut pruned = 0;
        for meta in listed {
            if SystemTime::from(meta.last_modified) < cutoff {
                match store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => pruned += 1,
                    Err(e) => tracing::warn!("cannot delete an expired task: {e}"),
                }
            }
        }
        Ok(pruned)
    }

    /// Stores (or replaces) `replica`'s usage ledger of `day` (`YYYY-MM-DD`) in the object
    /// store; the local store keeps its ledger as files and has nothing to upload.
    pub async fn put_usage(
        &self,
        day: &str,
        replica: &str,
        jsonl: Vec<u8>,
    ) -> Result<(), StoreError> {
        let Backend::Object { store, usage, .. } = &self.inner.backend else {
            return Ok(());
        };
        let key = usage
            .clone()
            .join(day)
            .join(format!("{replica}.jsonl").as_str());
        store
            .put(&key, PutPayload::from(jsonl))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("uploading the usage ledger", e))
    }

    /// Every replica's usage ledger of `days` (`YYYY-MM-DD`), as `(replica, lines)`; each at
    /// most `cap` bytes. One listing per day. Empty for the local store.
    pub async fn usage_objects(
        &self,
        days: &[String],
        cap: u64,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        let Backend::Object { store, usage, .. } = &self.inner.backend else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for day in days {
            let prefix = usage.clone().join(day.as_str());
            let listed: Vec<object_store::ObjectMeta> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| self.failed("listing the usage ledgers", e))?;
            for meta in listed {
                let Some(file) = meta.location.filename().map(str::to_string) else {
                    continue;
                };
                let Some(replica) = file.strip_suffix(".jsonl") else {
                    continue;
                };
                let bytes = self.read_object(store, &meta.location, &file, cap).await?;
                found.push((replica.to_string(), bytes));
            }
        }
        Ok(found)
    }

    /// Deletes image `name` and its sidecar, whoever made it (a partial image of a failed
    /// call, `images rm`).
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::refused(format!(
                "`{name}` is not an image name"
            )));
        }
        let writer = self.writer()?;
        // The sidecar first: without it the image is invisible at once, even if the rest fails.
        let sidecar = writer.delete(&self.key(&sidecar_name(name))).await;
        let image = writer.delete(&self.key(name)).await;
        match (sidecar, image) {
            (
                Err(object_store::Error::NotFound { .. }),
                Err(object_store::Error::NotFound { .. }),
            ) => Err(StoreError::not_found(name)),
            (_, Err(e)) if !matches!(e, object_store::Error::NotFound { .. }) => {
                Err(self.failed("deleting an image", e))
            }
            (Err(e), _) if !matches!(e, object_store::Error::NotFound { .. }) => {
                Err(self.failed("deleting an image's sidecar", e))
            }
            _ => {
                announce_change();
                Ok(())
            }
        }
    }

    /// Deletes image `name` and its sidecar if `viewer` may see it (a caller deletes only
    /// their own; an image they may not see is "not found").
    pub async fn delete(&self, name: &str, viewer: &Viewer) -> Result<(), StoreError> {
        self.visible_sidecar(name, viewer).await?;
        self.remove(name).await
    }

    /// The name in an `imagegen://images/<name>` URI, if the URI is one of ours and well formed.
    pub fn name_from_uri(uri: &str) -> Option<&str> {
        uri.strip_prefix(IMAGE_URI_PREFIX)
            .filter(|name| is_valid_name(name))
    }

    /// The image name in an `imagegen://images/<name>/meta` URI.
    pub fn name_from_meta_uri(uri: &str) -> Option<&str> {
        uri.strip_prefix(IMAGE_URI_PREFIX)?
            .strip_suffix(META_URI_SUFFIX)
            .filter(|name| is_valid_name(name))
    }

    /// The sidecar of `name` if it is visible to `viewer`; `Ok(None)` for a local image saved
    /// before sidecars (visible to [`Viewer::Everyone`] only).
    async fn visible_sidecar(
        &self,
        name: &str,
        viewer: &Viewer,
    ) -> Result<Option<Sidecar>, StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::refused(format!(
                "`{name}` is not an image name"
            )));
        }
        let sidecar = match self.read_sidecar_bytes(name).await {
            Ok(bytes) => Some(serde_json::from_slice::<Sidecar>(&bytes).map_err(|e| {
                self.failed("reading a sidecar", format!("{}: {e}", sidecar_name(name)))
            })?),
            Err(e) if e.kind == StoreErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if sidecar.is_none() && !self.is_legacy(name).await? {
            return Err(StoreError::not_found(name));
        }
        if !viewer.sees(sidecar.as_ref()) {
            return Err(StoreError::not_found(name));
        }
        Ok(sidecar)
    }

    /// Whether `name` is a local image saved before sidecars (before this process started).
    async fn is_legacy(&self, name: &str) -> Result<bool, StoreError> {
        let Backend::Local { dir, .. } = &self.inner.backend else {
            return Ok(false);
        };
        let path = dir.join(name);
        let meta = tokio::task::spawn_blocking(move || fs::symlink_metadata(path))
            .await
            .map_err(|e| self.failed("reading an image", e))?;
        // Whatever sits there (a link, a FIFO) counts: the reader refuses it with the reason.
        Ok(match meta {
            Ok(meta) => meta.modified().is_ok_and(|m| m < process_start()),
            Err(_) => false,
        })
    }

    async fn read_sidecar_bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let sidecar = sidecar_name(name);
        match &self.inner.backend {
            Backend::Local { dir, .. } => {
                let path = dir.join(&sidecar);
                self.read_local(path, sidecar, MAX_SIDECAR_BYTES).await
            }
            Backend::Object { store, .. } => self
                .read_object(store, &self.key(&sidecar), &sidecar, MAX_SIDECAR_BYTES)
                .await
                .map(|b| b.to_vec()),
        }
    }

    /// The sidecar of image `name`, if `viewer` may see the image.
    pub async fn sidecar(&self, name: &str, viewer: &Viewer) -> Result<Sidecar, StoreError> {
        self.visible_sidecar(name, viewer).await?.ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::NotFound,
                format!("`{name}` was saved before images had sidecars"),
            )
        })
    }

    /// Reads stored image `name` (at most `cap` bytes) with its MIME type, if `viewer` may
    /// see it.
    ///
    /// The local store serves only a regular file that sits in the directory itself: a
    /// symbolic link (to `/proc/self/environ`, say), a FIFO or a device under an image name is
    /// refused. The file is opened once and checked through its handle.
    pub async fn read(
        &self,
        name: &str,
        cap: u64,
        viewer: &Viewer,
    ) -> Result<(Bytes, &'static str), StoreError> {
        let mime = mime_for_name(name)
            .filter(|_| is_valid_name(name))
            .ok_or_else(|| StoreError::refused(format!("`{name}` is not an image name")))?;
        self.visible_sidecar(name, viewer).await?;
        let bytes = match &self.inner.backend {
            Backend::Local { dir, .. } => self
                .read_local(dir.join(name), name.to_string(), cap)
                .await
                .map(Bytes::from)?,
            Backend::Object { store, .. } => {
                self.read_object(store, &self.key(name), name, cap).await?
            }
        };
        Ok((bytes, mime))
    }

    async fn read_local(
        &self,
        path: PathBuf,
        name: String,
        cap: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let read = tokio::task::spawn_blocking(move || read_regular(&path, cap))
            .await
            .map_err(|e| self.failed("reading an image", e))?;
        read.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::not_found(&name),
            io::ErrorKind::InvalidData => {
                StoreError::refused(format!("cannot serve `{name}`: {e}"))
            }
            _ => self.failed(&format!("reading `{name}`"), e),
        })
    }

    async fn read_object(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &ObjectPath,
        name: &str,
        cap: u64,
    ) -> Result<Bytes, StoreError> {
        let found = store.get(key).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StoreError::not_found(name),
            e => self.failed(&format!("reading `{name}`"), e),
        })?;
        if found.meta.size > cap {
            return Err(StoreError::refused(format!(
                "`{name}` is {} bytes, more than output.max_read_mb allows ({cap} bytes)",
                found.meta.size
            )));
        }
        found
            .bytes()
            .await
            .map_err(|e| self.failed(&format!("reading `{name}`"), e))
    }

    /// The days of the store's listing, newest first, from `from` (a `YYYYMMDD`) back: the
    /// local directory is one chunk; an object store is walked a day prefix at a time, so a
    /// page of the newest images lists only the days it needs.
    async fn days(&self, from: Option<Day>) -> Result<Vec<DayChunk>, StoreError> {
        match &self.inner.backend {
            Backend::Local { dir, .. } => {
                let dir = dir.clone();
                let entries = tokio::task::spawn_blocking(move || local_entries(&dir))
                    .await
                    .map_err(|e| self.failed("listing images", e))?
                    .map_err(|e| self.failed("listing images", e))?;
                Ok(vec![DayChunk {
                    day: Day::MAX,
                    prefix: None,
                    loose: entries,
                }])
            }
            Backend::Object { store, root, .. } => {
                let top = store
                    .list_with_delimiter(Some(root))
                    .await
                    .map_err(|e| self.failed("listing images", e))?;
                let mut days: Vec<DayChunk> = Vec::new();
                // Names without a date (none this server makes today) sit at the root, each
                // listed under the day it was written.
                for meta in &top.objects {
                    let Some(entry) = object_entry(meta) else {
                        continue;
                    };
                    let day = day_of_time(entry.modified);
                    match days.iter_mut().find(|d| d.day == day) {
                        Some(chunk) => chunk.loose.push(entry),
                        None => days.push(DayChunk {
                            day,
                            prefix: None,
                            loose: vec![entry],
                        }),
                    }
                }
                for year in digits(&top.common_prefixes, 4) {
                    let months = store
                        .list_with_delimiter(Some(&year.1))
                        .await
                        .map_err(|e| self.failed("listing images", e))?;
                    for month in digits(&months.common_prefixes, 2) {
                        let in_month = store
                            .list_with_delimiter(Some(&month.1))
                            .await
                            .map_err(|e| self.failed("listing images", e))?;
                        for (day, prefix) in digits(&in_month.common_prefixes, 2) {
                            let day = year.0 * 10_000 + month.0 * 100 + day;
                            match days.iter_mut().find(|d| d.day == day) {
                                Some(chunk) => chunk.prefix = Some(prefix),
                                None => days.push(DayChunk {
                                    day,
                                    prefix: Some(prefix),
                                    loose: Vec::new(),
                                }),
                            }
                        }
                    }
                }
                days.retain(|d| from.is_none_or(|from| d.day <= from));
                days.sort_by_key(|d| std::cmp::Reverse(d.day));
                Ok(days)
            }
        }
    }

    /// Every file or object of `chunk` whose name is an image's or a sidecar's.
    async fn day_entries(&self, chunk: DayChunk) -> Result<Vec<Entry>, StoreError> {
        let (Backend::Object { store, .. }, Some(prefix)) = (&self.inner.backend, &chunk.prefix)
        else {
            return Ok(chunk.loose);
        };
        let mut entries: Vec<Entry> = store
            .list(Some(prefix))
            .try_filter_map(|meta| async move { Ok(object_entry(&meta)) })
            .try_collect()
            .await
            .map_err(|e| self.failed("listing images", e))?;
        entries.extend(chunk.loose);
        Ok(entries)
    }

    /// The names of the images with sidecars stored on `since` (a `YYYYMMDD`) or later, or
    /// all of them: what the history index catches up from.
    pub async fn names_since(&self, since: Option<Day>) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for chunk in self.days(None).await? {
            if since.is_some_and(|since| chunk.day < since) {
                break;
            }
            let entries = self.day_entries(chunk).await?;
            let sidecars: HashSet<&str> = entries
                .iter()
                .filter_map(|e| image_of_sidecar(&e.name))
                .collect();
            names.extend(
                entries
                    .iter()
                    .filter(|e| is_valid_name(&e.name) && sidecars.contains(e.name.as_str()))
                    .map(|e| e.name.clone()),
            );
        }
        Ok(names)
    }

    /// One page of the images `viewer` may see, newest first: at most `limit` (and never more
    /// than [`MAX_PAGE`]), after `cursor` (from the previous page).
    pub async fn list(
        &self,
        viewer: &Viewer,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let after = match cursor {
            Some(c) => Some(
                decode_cursor(c)
                    .ok_or_else(|| StoreError::refused("the cursor is not one this server gave"))?,
            ),
            None => None,
        };
        let after = after.map(|(at, name)| Entry {
            modified: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX)),
            name,
            bytes: 0,
        });
        let limit = limit.clamp(1, MAX_PAGE);
        let legacy_ok = self.is_local();
        let start = process_start();
        let mut page = Page::default();
        let mut last: Option<Entry> = None;
        for chunk in self.days(after.as_ref().map(entry_day)).await? {
            let entries = self.day_entries(chunk).await?;
            let sidecars: HashSet<&str> = entries
                .iter()
                .filter_map(|e| image_of_sidecar(&e.name))
                .collect();
            let mut images: Vec<Entry> = entries
                .iter()
                .filter(|e| is_valid_name(&e.name))
                .filter(|e| sidecars.contains(e.name.as_str()) || (legacy_ok && e.modified < start))
                .filter(|e| {
                    after
                        .as_ref()
                        .is_none_or(|a| listing_order(a, e) == std::cmp::Ordering::Less)
                })
                .cloned()
                .collect();
            images.sort_by(listing_order);
            // Whose each image is lives in its sidecar: read them a few at a time, in order,
            // until the page is full and one more visible image says there is a next page.
            let mut checked = futures::stream::iter(images)
                .map(|entry| {
                    let (store, viewer) = (self.clone(), viewer.clone());
                    async move {
                        let seen = !viewer.filters()
                            || matches!(
                                store.visible_sidecar(&entry.name, &viewer).await,
                                Ok(Some(_))
                            );
                        (entry, seen)
                    }
                })
                .buffered(16);
            while let Some((entry, seen)) = checked.next().await {
                if !seen {
                    continue;
                }
                if page.images.len() == limit {
                    page.next_cursor = last.as_ref().map(encode_cursor);
                    return Ok(page);
                }
                page.images.push(listed(&entry));
                last = Some(entry);
            }
        }
        Ok(page)
    }
}

/// A day as `YYYYMMDD`.
pub type Day = u32;

/// One day of a listing: the objects under its date prefix, and those kept outside any.
struct DayChunk {
    day: Day,
    prefix: Option<ObjectPath>,
    loose: Vec<Entry>,
}

/// The prefixes among `prefixes` whose last part is `width` digits, with their value.
fn digits(prefixes: &[ObjectPath], width: usize) -> Vec<(Day, ObjectPath)> {
    prefixes
        .iter()
        .filter_map(|p| {
            let part = p.filename()?;
            (part.len() == width && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((part.parse().ok()?, p.clone())))
                .flatten()
        })
        .collect()
}

/// The entry of an object whose name is an image's or a sidecar's.
fn object_entry(meta: &object_store::ObjectMeta) -> Option<Entry> {
    let name = meta.location.filename()?.to_string();
    (is_valid_name(&name) || image_of_sidecar(&name).is_some()).then(|| Entry {
        name,
        bytes: meta.size,
        modified: SystemTime::from(meta.last_modified),
    })
}

/// The UTC day of `time`.
pub(crate) fn day_of_time(time: SystemTime) -> Day {
    let date = time::OffsetDateTime::from(time).date();
    date.year().max(0) as Day * 10_000 + u8::from(date.month()) as Day * 100 + date.day() as Day
}

/// The day an entry is listed under: the date its name starts with, else the day it was written.
fn entry_day(entry: &Entry) -> Day {
    date_parts(&entry.name)
        .and_then(|[y, m, d]| format!("{y}{m}{d}").parse().ok())
        .unwrap_or_else(|| day_of_time(entry.modified))
}

/// Listing order: newest day first, then newest first, then by name. Days lead because an
/// object store is listed a day prefix at a time; within a day it is the time written.
fn listing_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    entry_day(b)
        .cmp(&entry_day(a))
        .then_with(|| b.modified.cmp(&a.modified))
        .then_with(|| a.name.cmp(&b.name))
}

/// How [`Store::save`] names an image: the caller's `filename` when it leaves something
/// usable, else the server's `YYYYMMDD-HHMMSS-slug-hash8`; each try's name from [`Self::candidate`].
struct Naming {
    /// The name without suffix or extension.
    base: String,
    /// The first try: 0 for a caller's name (it may well be free), else [`first_attempt`].
    first: u32,
    /// Whether `base` is the caller's (suffixes `-2`, `-3`, ... rather than `-1`, `-2`, ...).
    chosen: bool,
}

impl Naming {
    fn of(how: &Provenance, stamp: &str, sha256: &str) -> Self {
        if let Some(stem) = how.filename.as_deref().and_then(filename::sanitize_stem) {
            return Self {
                base: stem,
                first: 0,
                chosen: true,
            };
        }
        let base = format!(
            "{stamp}-{}-{}",
            slug(how.name_hint.as_deref().unwrap_or(&how.prompt), 40),
            &sha256[..8]
        );
        Self {
            first: first_attempt(&base),
            base,
            chosen: false,
        }
    }

    fn candidate(&self, attempt: u32, ext: &str) -> String {
        match (self.chosen, attempt) {
            (true, n) => filename::candidate(&self.base, n, ext),
            (false, 0) => format!("{}.{ext}", self.base),
            (false, n) => format!("{}-{n}.{ext}", self.base),
        }
    }
}

/// The first suffix to try for `base`: the images of one call are often identical (one
/// second, one prompt, one hash), and a create-only write only fails after sending the whole
/// image, so this process hands each save of the same base its own suffix up front.
fn first_attempt(base: &str) -> u32 {
    static CLAIMED: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>> =
        std::sync::Mutex::new(None);
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let claimed = claimed.get_or_insert_with(Default::default);
    // Bases carry the second they were made in: old ones are never asked for again.
    if claimed.len() > 1024 {
        claimed.clear();
    }
    let next = claimed.entry(base.to_string()).or_insert(0);
    let first = *next;
    *next += 1;
    first
}

fn listed(entry: &Entry) -> ListedImage {
    ListedImage {
        mime: mime_for_name(&entry.name).unwrap_or("application/octet-stream"),
        name: entry.name.clone(),
        bytes: entry.bytes,
        modified: entry.modified,
    }
}

fn sidecar_of(stored: &StoredImage, how: &Provenance, created: String) -> Sidecar {
    Sidecar {
        version: SIDECAR_VERSION,
        name: stored.name.clone(),
        mime: stored.mime.clone(),
        bytes: stored.bytes,
        sha256: stored.sha256.clone(),
        width: stored.width,
        height: stored.height,
        frames: stored.frames,
        created,
        caller: how.caller.clone(),
        tool: how.tool.clone(),
        prompt: how.prompt.clone(),
        prompt_sent: how.prompt_sent.clone().filter(|p| *p != how.prompt),
        preset: how.preset.clone(),
        revised_prompt: how.revised_prompt.clone(),
        provider: how.provider.clone(),
        model: how.model.clone(),
        params: how.params.clone(),
        usage: how.usage.clone(),
        request_id: how.request_id.clone(),
        inputs: how.inputs.clone(),
        notes: how.notes.clone(),
        upstream_sha256: None,
        filename_requested: how.filename.as_deref().map(filename::echoed),
    }
}

/// `image` with the prompt and its facts written into it, or why not.
fn embed_into(
    image: &GeneratedImage,
    how: &Provenance,
    created: &str,
    uri: &str,
) -> Result<embed::Embedded, embed::Skipped> {
    let meta = embed::Metadata {
        prompt: &how.prompt,
        revised_prompt: how.revised_prompt.as_deref(),
        provider: how.provider.as_deref(),
        model: how.model.as_deref(),
        created,
        uri,
    };
    embed::embed(&image.bytes, image.format, &meta)
}

/// The image and sidecar files directly in `dir` (a missing directory has none).
fn local_entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let entries = match fs::read_dir(dir) {
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
        if !is_valid_name(&name) && image_of_sidecar(&name).is_none() {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        out.push(Entry {
            bytes: meta.len(),
            modified: meta.modified()?,
            name,
        });
    }
    Ok(out)
}

/// Reads `path`, a regular file directly in the directory and at most `cap` bytes.
fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let refused = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let (file, len) = files::open_regular(path, false).map_err(|e| match e {
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
    files::read_capped(file, cap).map_err(|e| match e {
        FileError::Io(e) => e,
        other => refused(format!("it {other}")),
    })
}

#[cfg(test)]
mod tests;

/// Work for the thread that puts saved files on disk.
enum SyncJob {
    /// Flush this file's data.
    File(PathBuf),
    /// Answer once every earlier file is flushed.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The queue of the thread that puts saved files on disk, one at a time, in saving order.
static SYNCER: OnceLock<std::sync::mpsc::SyncSender<SyncJob>> = OnceLock::new();

fn syncer() -> &'static std::sync::mpsc::SyncSender<SyncJob> {
    SYNCER.get_or_init(|| {
        // Bounded, so a disk that cannot keep up slows saving instead of piling up work.
        let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(256);
        let spawned = std::thread::Builder::new()
            .name("imagegen-sync".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        SyncJob::File(path) => sync_now(&path),
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

fn sync_now(path: &Path) {
    // A file deleted meanwhile has nothing left to flush.
    if let Ok(file) = fs::File::open(path) {
        if let Err(e) = file.sync_data() {
            tracing::warn!(path = %path.display(), "cannot flush a saved file to disk: {e}");
        }
    }
}

fn sync_later(path: PathBuf) {
    if let Err(std::sync::mpsc::SendError(SyncJob::File(path))) = syncer().send(SyncJob::File(path))
    {
        sync_now(&path);
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
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
