//! The history index: what `find_images` and `imagegen-mcp images find` answer from.
//!
//! It is derived from the sidecars (and, for images stored before sidecars existed, from what
//! the image file itself tells), so it can always be thrown away and rebuilt (`imagegen-mcp
//! images reindex`). Each replica keeps its own SQLite file in its own data directory, never
//! in the shared store: SQLite over a network filesystem or a bucket is neither safe nor fast.
//! Images another replica stored are picked up by a catch-up before each query
//! ([`Index::search`]), which compares the store's listing with the index whenever the store
//! says it changed.
//!
//! Prompt words are searched with SQLite FTS5 (porter stemming over unicode61), with every
//! word of the caller's query passed as a quoted term, never as FTS5 syntax.
//!
//! Everything here is blocking I/O: async code goes through [`search_local`] or
//! `spawn_blocking`.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use imagegen_providers::GeneratedImage;
use rusqlite::{
    ffi::ErrorCode, params, types::Value, Connection, OptionalExtension as _, TransactionBehavior,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{
    is_valid_name,
    sidecar::{sidecar_name, Sidecar, SIDECAR_VERSION},
    IMAGE_URI_PREFIX,
};
use crate::{
    config::files::{self, FileError},
    error::ToolError,
};

/// Results per page when a query names no `limit`.
pub const DEFAULT_LIMIT: u32 = 20;
/// The most results one page holds.
pub const MAX_LIMIT: u32 = 100;
/// How often a store without a cheap change stamp is listed again, at most.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// How often the catch-up lists a whole object store (which is how it learns of images
/// another replica deleted); in between it lists only the newest days.
pub const FULL_LISTING_EVERY: Duration = Duration::from_secs(60);

/// The layout of the index file; any other version is dropped and rebuilt.
const SCHEMA_VERSION: i64 = 2;
/// The longest `query` taken, in bytes.
const MAX_QUERY_BYTES: usize = 1000;
/// The most words one `query` may hold.
const MAX_WORDS: usize = 32;
/// The longest `provider`, `model`, date or cursor taken, in bytes.
const MAX_FIELD_BYTES: usize = 256;
/// The largest sidecar read; a real one is a few kilobytes.
const MAX_SIDECAR_BYTES: u64 = 1 << 20;
/// The largest image read to take it in without a sidecar (it is hashed whole).
const MAX_PROBE_BYTES: u64 = 512 << 20;
/// How long an image that could not be read is left alone before the next try (it may
/// have been half-written by another process).
const RETRY_UNREADABLE_AFTER: Duration = Duration::from_secs(60);
/// How long SQLite waits for another process's write (a `reindex` next to a server).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of the index or of reading the store behind it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// SQLite failed (a damaged, locked or unwritable index file).
    #[error("history index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Listing or reading the store failed.
    #[error("reading the image store: {0}")]
    Store(#[from] io::Error),
}

impl IndexError {
    /// Whether the index file is damaged (or not an index at all): it is then set aside and
    /// rebuilt.
    fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::Sqlite(e) if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
            )
        )
    }
}

/// Where an indexed image's facts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Its sidecar.
    Sidecar,
    /// The image file alone (stored before sidecars, or its sidecar unreadable).
    File,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::File => "file",
        }
    }
}

/// One image in a store's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The image's name.
    pub name: String,
    /// Whether its sidecar (`NAME.json`) is there.
    pub has_sidecar: bool,
}

/// What a store lists.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The images found.
    pub images: Vec<Listed>,
    /// Whether that is every image in the store (so an indexed image missing from it was
    /// deleted), or only the newer ones.
    pub complete: bool,
}

/// Where the index learns what a store holds: the local output directory ([`DirSource`])
/// today; an object store's listing plugs in here.
pub trait SidecarSource: Send + Sync {
    /// What the store is (a directory, a bucket URL without credentials), for logs and to
    /// keep two stores from ever sharing one index.
    fn location(&self) -> String;

    /// A cheap stamp that changes whenever an image or sidecar is added or removed; `None`
    /// when there is none to trust now (the store is then listed at most once per
    /// [`CATCH_UP_EVERY`]).
    fn revision(&self) -> Option<String> {
        None
    }

    /// The images stored, at least all those stored since `after` (every one when `None`);
    /// a source listing by date should allow for clock skew between replicas.
    fn list(&self, after: Option<OffsetDateTime>) -> io::Result<Listing>;

    /// The sidecar of image `name`.
    fn sidecar(&self, name: &str) -> io::Result<Sidecar>;

    /// What the image `name` itself tells (dimensions, hash, time), for an image without a
    /// sidecar.
    fn probe(&self, name: &str) -> io::Result<Sidecar>;
}

/// The images and sidecars in a local directory (`output.dir`).
#[derive(Debug, Clone)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The regular file `name` in the directory (never a symbolic link), at most `cap` bytes.
    fn read(&self, name: &str, cap: u64) -> io::Result<(Vec<u8>, fs::Metadata)> {
        let refused = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let (file, _) = files::open_regular(&self.dir.join(name), false).map_err(|e| match e {
            FileError::Io(e) => e,
            other => refused(format!("{name}: {other}")),
        })?;
        let meta = file.metadata()?;
        let bytes = files::read_capped(file, cap).map_err(|e| match e {
            FileError::Io(e) => e,
            other => refused(format!("{name}: {other}")),
        })?;
        Ok((bytes, meta))
    }
}

/// How recent a directory change must be for its stamp to be distrusted: a file created in
/// the same clock tick as the last listing leaves the directory's time unchanged.
const RACY_WINDOW: Duration = Duration::from_secs(2);

impl SidecarSource for DirSource {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn revision(&self) -> Option<String> {
        let modified = match fs::metadata(&self.dir) {
            Ok(meta) => meta.modified().ok()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some("absent".into()),
            Err(_) => return None,
        };
        let age = std::time::SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        (age >= RACY_WINDOW).then(|| {
            let since_epoch = modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            since_epoch.as_nanos().to_string()
        })
    }

    fn list(&self, _after: Option<OffsetDateTime>) -> io::Result<Listing> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Listing {
                    images: Vec::new(),
                    complete: true,
                })
            }
            Err(e) => return Err(e),
        };
        let mut images = Vec::new();
        let mut sidecars = HashSet::new();
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // The entry's type comes with the listing on most filesystems: no stat per file.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if let Some(image) = name.strip_suffix(super::sidecar::SIDECAR_SUFFIX) {
                if is_valid_name(image) {
                    sidecars.insert(image.to_string());
                }
            } else if is_valid_name(&name) {
                images.push(name);
            }
        }
        Ok(Listing {
            images: images
                .into_iter()
                .map(|name| Listed {
                    has_sidecar: sidecars.contains(&name),
                    name,
                })
                .collect(),
            complete: true,
        })
    }

    fn sidecar(&self, name: &str) -> io::Result<Sidecar> {
        let (bytes, _) = self.read(&sidecar_name(name), MAX_SIDECAR_BYTES)?;
        let mut sidecar: Sidecar = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}.json: {e}")))?;
        // The file's own name is the truth; a sidecar copied beside another image says so.
        sidecar.name = name.to_string();
        Ok(sidecar)
    }

    fn probe(&self, name: &str) -> io::Result<Sidecar> {
        let (bytes, meta) = self.read(name, MAX_PROBE_BYTES)?;
        let sha256 = super::hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        let image = GeneratedImage::from_encoded(Bytes::from(bytes))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}")))?;
        let created = meta
            .modified()
            .map(OffsetDateTime::from)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        Ok(Sidecar {
            version: SIDECAR_VERSION,
            name: name.to_string(),
            mime: image.mime().into(),
            bytes: size,
            sha256,
            upstream_sha256: None,
            width: image.width,
            height: image.height,
            frames: (image.frames > 1).then_some(image.frames),
            created: crate::clock::rfc3339(created),
            caller: None,
            tool: None,
            prompt: String::new(),
            prompt_sent: None,
            preset: None,
            revised_prompt: None,
            provider: None,
            model: None,
            params: Default::default(),
            usage: None,
            request_id: None,
            inputs: Vec::new(),
            notes: vec!["taken in from the image file: it has no sidecar".into()],
            filename_requested: None,
        })
    }
}

/// The index file of the store at `location` under `data_dir`: one file per store, named by
/// a hash of its location, so two stores (two `output.dir`s, two buckets) never share one.
pub fn default_path(data_dir: &Path, location: &str) -> PathBuf {
    let key = super::hex(&Sha256::digest(location.as_bytes()));
    data_dir
        .join("imagegen-mcp/index")
        .join(format!("{}.sqlite3", &key[..16]))
}

/// What a [`Index::reindex`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReindexReport {
    /// Images indexed from their sidecars.
    pub from_sidecars: usize,
    /// Images indexed from the file alone (no sidecar, or an unreadable one).
    pub from_files: usize,
    /// Images left out: neither sidecar nor file could be read.
    pub skipped: usize,
    /// How long it took, milliseconds.
    pub elapsed_ms: u64,
}

/// A query of the history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindQuery {
    /// Words that must all be in the prompt or the revised prompt (stemmed).
    pub words: Vec<String>,
    /// Only this provider's images (case-insensitive).
    pub provider: Option<String>,
    /// Only this model's images (case-insensitive).
    pub model: Option<String>,
    /// Only this caller's images; `None`: everyone's.
    pub caller: Option<String>,
    /// Made at or after this.
    pub since: Option<OffsetDateTime>,
    /// Made at or before this.
    pub until: Option<OffsetDateTime>,
    /// Results per page, 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
}

/// A place in the newest-first order, as an opaque `cursor` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The order key ([`order_base`]) of the last image of the previous page.
    id: i64,
}

/// The prefix of this layout's cursors, so a later one can tell its own from these.
const CURSOR_PREFIX: &str = "c2.";

impl Cursor {
    /// The cursor text a client passes back.
    pub fn encode(&self) -> String {
        format!(
            "{CURSOR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.id.to_string())
        )
    }

    /// Reads a cursor this server gave out.
    pub fn decode(text: &str) -> Result<Self, String> {
        let bad = || "not a cursor this server gave out: pass `next_cursor` as it came".to_string();
        if text.len() > MAX_FIELD_BYTES {
            return Err(bad());
        }
        let id = text
            .strip_prefix(CURSOR_PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b)
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(bad)?;
        Ok(Self { id })
    }
}

/// Images made in the same microsecond that keep distinct order keys.
const TIE_SLOTS: i64 = 512;

/// The smallest order key of an image made at `t`: microseconds since the epoch times
/// [`TIE_SLOTS`]. The order key is the row id of both tables, so the full-text table walks
/// its matches newest first and a page stops after `limit` rows, however many match.
fn order_base(t: OffsetDateTime) -> i64 {
    let micros = (unix_ns(t) / 1000).clamp(i64::MIN / TIE_SLOTS + 1, i64::MAX / TIE_SLOTS - 1);
    micros * TIE_SLOTS
}

/// The time of order key `id`.
fn order_time(id: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(id.div_euclid(TIE_SLOTS)) * 1000).ok()
}

/// One image found, with the facts its sidecar records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FoundImage {
    /// The image's name in the store.
    pub name: String,
    /// `imagegen://images/<name>`, readable with `resources/read`.
    pub uri: String,
    /// When it was stored, RFC 3339.
    pub created: String,
    /// The prompt as the caller gave it (empty for an image stored without a sidecar).
    pub prompt: String,
    /// The prompt as the provider rewrote it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// The provider's configured name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Who made it (over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// `WIDTHxHEIGHT`, as `size` is passed to `generate_image`.
    pub size: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// MIME type.
    pub mime: String,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Whether these facts come from a sidecar (`false`: from the image file alone).
    pub has_sidecar: bool,
}

/// One page of results, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindPage {
    /// The images on this page.
    pub images: Vec<FoundImage>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// The parameters of `find_images` (and of `imagegen-mcp images find`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct FindParams {
    /// Words that must all appear in the prompt (or the provider's revised prompt), in any
    /// order; "lighthouses" also finds "lighthouse". Only letters and digits count: quotes,
    /// `*`, `-` and the like are ignored. Omit to list every image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Only images made with this configured provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Only images made with this model (the name results report, such as `gpt-image-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only images made on or after this: a day (`2026-11-24`, UTC) or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only images made on or before this: a day (`2026-11-30`, the whole day, UTC) or an
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Results per page: 20 by default, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page, to get the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `value` cut to [`MAX_FIELD_BYTES`] for quoting in an error.
fn quoted(value: &str) -> String {
    let mut end = value.len().min(MAX_FIELD_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}", &value[..end])
}

/// Reads a `since` / `until` bound: a day (`YYYY-MM-DD`, UTC; for `until`, its last
/// instant) or an RFC 3339 time.
pub fn parse_bound(value: &str, end_of_day: bool) -> Result<OffsetDateTime, String> {
    let value = value.trim();
    let wrong = || {
        format!(
            "{} is not a date: use YYYY-MM-DD or RFC 3339 (2026-12-01T18:30:00Z)",
            quoted(value)
        )
    };
    if value.len() > MAX_FIELD_BYTES {
        return Err(wrong());
    }
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(t);
    }
    let day = time::Date::parse(
        value,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| wrong())?;
    let start = day.midnight().assume_utc();
    if !end_of_day {
        return Ok(start);
    }
    Ok(day
        .next_day()
        .map(|next| next.midnight().assume_utc() - time::Duration::NANOSECOND)
        .unwrap_or(start))
}

/// Nanoseconds since the epoch, clamped to what the index stores.
fn unix_ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(if t.year() < 1970 {
        i64::MIN
    } else {
        i64::MAX
    })
}

impl FindParams {
    /// The query these parameters ask for, seen by `caller` (`None`: every image); a wrong
    /// value is an `invalid_request` error naming its parameter.
    pub fn to_query(&self, caller: Option<String>) -> Result<FindQuery, ToolError> {
        let text = |param: &str, value: &Option<String>| -> Result<Option<String>, ToolError> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) if v.len() > MAX_FIELD_BYTES => Err(ToolError::invalid_param(
                    param,
                    format!("`{param}` is longer than {MAX_FIELD_BYTES} bytes"),
                )),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        let bound = |param: &str, value: &Option<String>, end_of_day: bool| {
            text(param, value)?
                .map(|v| {
                    parse_bound(&v, end_of_day)
                        .map_err(|e| ToolError::invalid_param(param, format!("`{param}`: {e}")))
                })
                .transpose()
        };
        let query = self.query.as_deref().unwrap_or_default();
        if query.len() > MAX_QUERY_BYTES {
            return Err(ToolError::invalid_param(
                "query",
                format!("`query` is longer than {MAX_QUERY_BYTES} bytes"),
            ));
        }
        let words = search_words(query);
        if words.len() > MAX_WORDS {
            return Err(ToolError::invalid_param(
                "query",
                format!("`query` has more than {MAX_WORDS} words"),
            ));
        }
        let since = bound("since", &self.since, false)?;
        let until = bound("until", &self.until, true)?;
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                return Err(ToolError::invalid_param(
                    "since",
                    "`since` is later than `until`",
                ));
            }
        }
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(n @ 1..=MAX_LIMIT) => n,
            Some(n) => {
                return Err(ToolError::invalid_param(
                    "limit",
                    format!("`limit` is {n}: it must be 1 to {MAX_LIMIT}"),
                ))
            }
        };
        let after = text("cursor", &self.cursor)?
            .map(|c| {
                Cursor::decode(&c)
                    .map_err(|e| ToolError::invalid_param("cursor", format!("`cursor`: {e}")))
            })
            .transpose()?;
        Ok(FindQuery {
            words,
            provider: text("provider", &self.provider)?,
            model: text("model", &self.model)?,
            caller,
            since,
            until,
            limit,
            after,
        })
    }
}

/// The words of a query worth searching: split at white space, those without a letter or
/// digit dropped (they would tokenize to nothing).
fn search_words(query: &str) -> Vec<String> {
    query
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(str::to_string)
        .collect()
}

/// `words` as an FTS5 query: each a quoted string (inner quotes doubled), all required. A
/// quoted string is only ever a phrase of plain terms, so `NEAR(`, `*`, `-`, `OR`, `^` and
/// column filters in what the caller typed mean nothing.
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The words of an image's name, for an image without a sidecar: `20261201-101500-a-red-fox-
/// 1a2b3c4d.png` gives `a red fox` (the name's slug is the start of its prompt).
fn name_words(name: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let parts: Vec<&str> = stem.split('-').collect();
    let is_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let mut start = 0;
    if parts.len() > 2 && is_digits(parts[0], 8) && is_digits(parts[1], 6) {
        start = 2;
    }
    let mut end = parts.len();
    // A numeric suffix for a name already taken, then the content hash.
    if end > start + 1 && parts[end - 1].bytes().all(|b| b.is_ascii_digit()) {
        end -= 1;
    }
    if end > start + 1
        && parts[end - 1].len() == 8
        && parts[end - 1].bytes().all(|b| b.is_ascii_hexdigit())
    {
        end -= 1;
    }
    parts[start..end].join(" ")
}

/// The SQL that makes an empty index.
const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE images (
    -- The order key (order_base): newest first is id descending.
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    created TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    provider TEXT COLLATE NOCASE,
    model TEXT COLLATE NOCASE,
    caller TEXT,
    prompt TEXT NOT NULL,
    revised_prompt TEXT,
    mime TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX images_by_model ON images (model);
CREATE INDEX images_by_provider ON images (provider);
CREATE INDEX images_by_caller ON images (caller);
CREATE VIRTUAL TABLE images_fts USING fts5(
    prompt, revised_prompt, name_words,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
";

/// Makes `conn` ready for the store at `location`: the schema created (or re-created when
/// its version differs), and emptied when it indexed another store.
fn prepare(conn: &Connection, location: &str) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: a query never waits for another process's write, and a write is one fsync less.
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    // The index can always be rebuilt: losing the last writes at a power cut is fine.
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let version = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
    };
    if version(conn)? != SCHEMA_VERSION {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Another process may have made it while this one waited for the lock.
        match version(conn) {
            Ok(SCHEMA_VERSION) => conn.execute_batch("COMMIT")?,
            Ok(found) => {
                if found != 0 {
                    tracing::info!(found, "the history index has another layout; rebuilding it");
                }
                make_schema(conn, location)?
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    let indexed: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'location'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if indexed.as_deref() != Some(location) {
        tracing::info!(
            store = location,
            "the history index file held another store's images; starting it afresh"
        );
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             DELETE FROM images_fts;
             DELETE FROM images;
             INSERT OR REPLACE INTO meta (key, value) VALUES ('location', {});
             COMMIT;",
            sql_literal(location)
        ))?;
    }
    Ok(())
}

/// Drops whatever is there and makes the schema, inside the caller's open transaction,
/// which it ends.
fn make_schema(conn: &Connection, location: &str) -> rusqlite::Result<()> {
    let created = conn
        .execute_batch(
            "DROP TABLE IF EXISTS images_fts;
                 DROP TABLE IF EXISTS images;
                 DROP TABLE IF EXISTS meta;",
        )
        .and_then(|()| conn.execute_batch(SCHEMA))
        .and_then(|()| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('location', ?1)",
                [location],
            )
        })
        .and_then(|_| {
            conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
        });
    if let Err(e) = created {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

/// `text` as an SQL string literal.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What the catch-up remembers between queries.
#[derive(Debug, Default)]
struct SyncState {
    /// The store's revision at the last complete catch-up.
    revision: Option<String>,
    /// When the store was last listed.
    listed_at: Option<Instant>,
    /// Images that could not be read, and when: left alone for a while.
    unreadable: HashMap<String, Instant>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    sync: SyncState,
}

/// The history index of one store: a SQLite file (or, when no file can be used, memory).
pub struct Index {
    inner: Mutex<Inner>,
    /// The file; `None` for an index in memory.
    path: Option<PathBuf>,
    /// The store indexed.
    location: String,
    /// How long after a listing a store without a change stamp is listed again.
    catch_up_every: Duration,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .field("location", &self.location)
            .finish()
    }
}

/// Moves a damaged index file (and its WAL) out of the way, keeping one copy to look at.
fn set_aside(path: &Path) {
    let mut damaged = path.as_os_str().to_owned();
    damaged.push(".damaged");
    if let Err(e) = fs::rename(path, &damaged) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot move the damaged index aside: {e}");
            let _ = fs::remove_file(path);
        }
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = fs::remove_file(PathBuf::from(side));
    }
}

/// An open connection to the index file at `path`, set up for `location`; a damaged file is
/// set aside and replaced by a new one.
fn open_file(path: &Path, location: &str) -> Result<Connection, IndexError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let attempt = || -> Result<Connection, IndexError> {
        let conn = Connection::open(path)?;
        prepare(&conn, location)?;
        Ok(conn)
    };
    match attempt() {
        Err(e) if e.is_damage() => {
            tracing::warn!(path = %path.display(), "the history index is damaged ({e}); starting a new one, rebuilt from the store");
            set_aside(path);
            attempt()
        }
        other => other,
    }
}

fn open_memory(location: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    prepare(&conn, location)?;
    Ok(conn)
}

impl Index {
    /// Opens (or creates) the index file at `path` for the store at `location`.
    pub fn open(path: &Path, location: &str) -> Result<Self, IndexError> {
        Ok(Self::with(open_file(path, location)?, Some(path), location))
    }

    /// An index in memory, for the store at `location`: what a replica uses when its index
    /// file cannot be (it is rebuilt from the store by the first query).
    pub fn memory(location: &str) -> Result<Self, IndexError> {
        Ok(Self::with(open_memory(location)?, None, location))
    }

    /// The index file at `path` (or in memory when `path` is `None` or cannot be used; the
    /// reason is logged): opening never fails a call.
    pub fn open_or_memory(path: Option<&Path>, location: &str) -> Result<Self, IndexError> {
        if let Some(path) = path {
            match Self::open(path, location) {
                Ok(index) => return Ok(index),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "cannot use the history index file ({e}); keeping the index in memory, rebuilt from the store"
                ),
            }
        }
        Self::memory(location)
    }

    fn with(conn: Connection, path: Option<&Path>, location: &str) -> Self {
        Self {
            inner: Mutex::new(Inner {
                conn,
                sync: SyncState::default(),
            }),
            path: path.map(Path::to_path_buf),
            location: location.to_string(),
            catch_up_every: CATCH_UP_EVERY,
        }
    }

    /// This index, listing a store without a change stamp at most once per `every` instead
    /// of [`CATCH_UP_EVERY`].
    pub fn with_catch_up_every(mut self, every: Duration) -> Self {
        self.catch_up_every = every;
        self
    }

    /// The index file, `None` for one in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a rolled-back transaction.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records (or replaces) the image `sidecar` describes, as the store saves it.
    pub fn upsert(&self, sidecar: &Sidecar) -> Result<(), IndexError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert(&tx, sidecar, Origin::Sidecar)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets the image `name` (it was deleted); whether it was indexed.
    pub fn remove(&self, name: &str) -> Result<bool, IndexError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed = delete(&tx, name)?;
        tx.commit()?;
        Ok(removed)
    }

    /// Whether the image `name` is indexed.
    pub fn known(&self, name: &str) -> Result<bool, IndexError> {
        let inner = self.lock();
        let found: Option<i64> = inner
            .conn
            .prepare_cached("SELECT id FROM images WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        Ok(found.is_some())
    }

    /// How many images are indexed.
    pub fn count(&self) -> Result<u64, IndexError> {
        let inner = self.lock();
        let n: i64 = inner
            .conn
            .query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Replaces the whole index with `images` (each with where its facts came from), in one
    /// transaction: a query meanwhile sees the old index.
    pub fn rebuild(
        &self,
        images: impl IntoIterator<Item = (Sidecar, Origin)>,
    ) -> Result<usize, IndexError> {
        let mut inner = self.lock();
        inner.sync = SyncState::default();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("DELETE FROM images_fts; DELETE FROM images;")?;
        let mut count = 0;
        for (sidecar, origin) in images {
            insert_fresh(&tx, &sidecar, origin)?;
            count += 1;
        }
        // One segment for the whole word index: left as the bulk insert made it, the next
        // small write would pay for merging its many segments.
        tx.execute_batch("INSERT INTO images_fts (images_fts) VALUES ('optimize')")?;
        tx.commit()?;
        // Statistics for the planner, so that word queries walk the time order.
        inner.conn.execute_batch("PRAGMA optimize")?;
        Ok(count)
    }

    /// Rebuilds the index from every sidecar in `source`, and from the file itself for an
    /// image without one (`imagegen-mcp images reindex`).
    pub fn reindex(&self, source: &dyn SidecarSource) -> Result<ReindexReport, IndexError> {
        let started = Instant::now();
        let revision = source.revision();
        let mut listing = source.list(None)?;
        // Images of one microsecond get their order keys in name order, in any rebuild.
        listing.images.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut report = ReindexReport::default();
        let images = listing.images.iter().filter_map(|listed| {
            let (sidecar, origin) = load(source, listed)?;
            match origin {
                Origin::Sidecar => report.from_sidecars += 1,
                Origin::File => report.from_files += 1,
            }
            Some((sidecar, origin))
        });
        self.rebuild(images)?;
        report.skipped = listing.images.len() - report.from_sidecars - report.from_files;
        let mut inner = self.lock();
        inner.sync.revision = revision;
        inner.sync.listed_at = Some(Instant::now());
        report.elapsed_ms = started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        Ok(report)
    }

    /// Brings the index up to date with `source` when the store changed since the last
    /// catch-up (or, for a store without a change stamp, when it was last listed over
    /// [`CATCH_UP_EVERY`] ago): takes in new images (from their sidecars, else their files),
    /// re-reads those indexed from the file whose sidecar has appeared since, and forgets
    /// deleted ones. Returns how many images it added, changed or removed.
    pub fn catch_up(&self, source: &dyn SidecarSource) -> Result<usize, IndexError> {
        let mut inner = self.lock();
        let revision = source.revision();
        let due = match (&revision, &inner.sync.revision) {
            (Some(now), Some(synced)) => now != synced,
            _ => inner
                .sync
                .listed_at
                .is_none_or(|at| at.elapsed() >= self.catch_up_every),
        };
        if !due {
            return Ok(0);
        }
        let newest: Option<i64> = inner
            .conn
            .query_row("SELECT MAX(id) FROM images", [], |r| r.get(0))?;
        let after = newest.and_then(order_time);
        let mut listing = source.list(after)?;
        listing.images.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut indexed: HashMap<String, Origin> = HashMap::new();
        {
            let mut statement = inner
                .conn
                .prepare_cached("SELECT name, origin FROM images")?;
            let rows = statement.query_map([], |r| {
                let origin: String = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    if origin == "file" {
                        Origin::File
                    } else {
                        Origin::Sidecar
                    },
                ))
            })?;
            for row in rows {
                let (name, origin) = row?;
                indexed.insert(name, origin);
            }
        }
        let now = Instant::now();
        let Inner { conn, sync } = &mut *inner;
        sync.unreadable
            .retain(|_, at| now.duration_since(*at) < RETRY_UNREADABLE_AFTER);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut changed = 0;
        let mut listed = HashSet::with_capacity(listing.images.len());
        for image in &listing.images {
            listed.insert(image.name.as_str());
            let wanted = match indexed.get(&image.name) {
                None => true,
                Some(Origin::File) => image.has_sidecar,
                Some(Origin::Sidecar) => false,
            };
            if !wanted || sync.unreadable.contains_key(&image.name) {
                continue;
            }
            match load(source, image) {
                Some((sidecar, origin)) => {
                    if indexed.get(&image.name) == Some(&Origin::File) && origin == Origin::File {
                        continue;
                    }
                    insert(&tx, &sidecar, origin)?;
                    changed += 1;
                }
                None => {
                    sync.unreadable.insert(image.name.clone(), now);
                }
            }
        }
        if listing.complete {
            for name in indexed.keys().filter(|n| !listed.contains(n.as_str())) {
                delete(&tx, name)?;
                changed += 1;
            }
        }
        tx.commit()?;
        sync.revision = revision;
        sync.listed_at = Some(now);
        if changed > 0 {
            tracing::debug!(changed, store = %self.location, "history index caught up");
        }
        Ok(changed)
    }

    /// One page of the images `query` asks for, newest first, from the index as it is.
    pub fn find(&self, query: &FindQuery) -> Result<FindPage, IndexError> {
        let inner = self.lock();
        Ok(find_in(&inner.conn, query)?)
    }

    /// Catches up with `source`, then answers `query`: what `find_images` runs. A damaged
    /// index is set aside and rebuilt from the store on the way; a catch-up that fails for
    /// any other reason (another process holding the write lock too long) is logged and the
    /// index answers as it is.
    pub fn search(
        &self,
        source: &dyn SidecarSource,
        query: &FindQuery,
    ) -> Result<FindPage, IndexError> {
        match self.catch_up(source) {
            Ok(_) => {}
            Err(e) if e.is_damage() => {
                self.recover(&e);
                self.catch_up(source)?;
            }
            Err(e) => tracing::warn!(
                store = %self.location,
                "the history index could not catch up ({e}); answering from it as it is"
            ),
        }
        match self.find(query) {
            Err(e) if e.is_damage() => {
                self.recover(&e);
                self.catch_up(source)?;
                self.find(query)
            }
            other => other,
        }
    }

    /// Replaces a damaged index with an empty one (a new file, else memory); the next
    /// catch-up fills it.
    fn recover(&self, cause: &IndexError) {
        let mut inner = self.lock();
        tracing::warn!(store = %self.location, "the history index is damaged ({cause}); rebuilding it from the store");
        let mut fresh = None;
        if let Some(path) = &self.path {
            // The damaged file is closed before it is moved.
            if let Ok(placeholder) = Connection::open_in_memory() {
                drop(std::mem::replace(&mut inner.conn, placeholder));
            }
            set_aside(path);
            match open_file(path, &self.location) {
                Ok(conn) => fresh = Some(conn),
                Err(e) => tracing::warn!(
                    "cannot make a new index file ({e}); keeping the index in memory"
                ),
            }
        }
        match fresh.map_or_else(|| open_memory(&self.location), Ok) {
            Ok(conn) => inner.conn = conn,
            Err(e) => tracing::error!("cannot make even an index in memory: {e}"),
        }
        inner.sync = SyncState::default();
    }
}

/// The facts of `listed`: its sidecar, else (no sidecar, or an unreadable one) what its file
/// tells; `None` when neither can be read (logged).
fn load(source: &dyn SidecarSource, listed: &Listed) -> Option<(Sidecar, Origin)> {
    if listed.has_sidecar {
        match source.sidecar(&listed.name) {
            Ok(sidecar) => return Some((sidecar, Origin::Sidecar)),
            Err(e) => tracing::warn!(
                image = %listed.name,
                "cannot read its sidecar ({e}); indexing what the image file tells"
            ),
        }
    }
    match source.probe(&listed.name) {
        Ok(sidecar) => Some((sidecar, Origin::File)),
        Err(e) => {
            tracing::warn!(image = %listed.name, "cannot index it: {e}");
            None
        }
    }
}

fn delete(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT id FROM images WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    let Some(id) = id else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM images_fts WHERE rowid = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM images WHERE id = ?1")?
        .execute([id])?;
    Ok(true)
}

fn insert(conn: &Connection, sidecar: &Sidecar, origin: Origin) -> rusqlite::Result<()> {
    delete(conn, &sidecar.name)?;
    insert_fresh(conn, sidecar, origin)
}

/// Inserts an image known not to be indexed.
fn insert_fresh(conn: &Connection, s: &Sidecar, origin: Origin) -> rusqlite::Result<()> {
    let created = OffsetDateTime::parse(&s.created, &Rfc3339).ok();
    let created_ns = created.map_or(0, unix_ns);
    let base = order_base(created.unwrap_or(OffsetDateTime::UNIX_EPOCH));
    let taken: Option<i64> = conn
        .prepare_cached("SELECT MAX(id) FROM images WHERE id >= ?1 AND id < ?2")?
        .query_row([base, base + TIE_SLOTS], |r| r.get(0))?;
    // The next free slot of that microsecond; should all be taken, SQLite picks a key (the
    // image then sorts as the newest).
    let id = match taken {
        None => Some(base),
        Some(last) if last + 1 < base + TIE_SLOTS => Some(last + 1),
        Some(_) => None,
    };
    conn.prepare_cached(
        "INSERT INTO images (id, name, origin, created, created_ns, provider, model, caller,
            prompt, revised_prompt, mime, bytes, width, height, sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        id,
        s.name,
        origin.as_str(),
        s.created,
        created_ns,
        s.provider,
        s.model,
        s.caller,
        s.prompt,
        s.revised_prompt,
        s.mime,
        i64::try_from(s.bytes).unwrap_or(i64::MAX),
        s.width,
        s.height,
        s.sha256,
    ])?;
    let id = conn.last_insert_rowid();
    let words = match origin {
        Origin::File => name_words(&s.name),
        Origin::Sidecar => String::new(),
    };
    conn.prepare_cached(
        "INSERT INTO images_fts (rowid, prompt, revised_prompt, name_words) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, s.prompt, s.revised_prompt, words])?;
    Ok(())
}

fn find_in(conn: &Connection, q: &FindQuery) -> rusqlite::Result<FindPage> {
    // With words, the full-text table drives: it walks its matches by row id (the order key)
    // from the newest, and the facts are joined row by row, so a page of a word in half the
    // prompts stops after a page's worth instead of collecting every match first.
    let (from, key) = if q.words.is_empty() {
        ("images i", "i.id")
    } else {
        (
            "images_fts JOIN images i ON i.id = images_fts.rowid",
            "images_fts.rowid",
        )
    };
    let mut sql = format!(
        "SELECT i.name, i.created, i.prompt, i.revised_prompt, i.provider, i.model, i.caller,
                i.mime, i.bytes, i.width, i.height, i.sha256, i.origin, i.id
         FROM {from} WHERE 1"
    );
    let mut args: Vec<Value> = Vec::new();
    // Each clause has one `?`, numbered here as its value is bound.
    fn arg(sql: &mut String, args: &mut Vec<Value>, clause: &str, value: Value) {
        args.push(value);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    }
    if !q.words.is_empty() {
        arg(
            &mut sql,
            &mut args,
            " AND images_fts MATCH ?",
            Value::Text(fts_query(&q.words)),
        );
    }
    for (clause, value) in [
        (" AND i.provider = ?", &q.provider),
        (" AND i.model = ?", &q.model),
        (" AND i.caller = ?", &q.caller),
    ] {
        if let Some(value) = value {
            arg(&mut sql, &mut args, clause, Value::Text(value.clone()));
        }
    }
    // Dates and the cursor are ranges of the order key, which both tables seek to.
    if let Some(since) = q.since {
        let clause = format!(" AND {key} >= ?");
        arg(
            &mut sql,
            &mut args,
            &clause,
            Value::Integer(order_base(since)),
        );
    }
    if let Some(until) = q.until {
        let clause = format!(" AND {key} < ?");
        let end = order_base(until).saturating_add(TIE_SLOTS);
        arg(&mut sql, &mut args, &clause, Value::Integer(end));
    }
    if let Some(after) = &q.after {
        let clause = format!(" AND {key} < ?");
        arg(&mut sql, &mut args, &clause, Value::Integer(after.id));
    }
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let clause = format!(" ORDER BY {key} DESC LIMIT ?");
    arg(
        &mut sql,
        &mut args,
        &clause,
        Value::Integer(i64::from(limit) + 1),
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(rusqlite::params_from_iter(args), |r| {
        let width: u32 = r.get(9)?;
        let height: u32 = r.get(10)?;
        let name: String = r.get(0)?;
        let origin: String = r.get(12)?;
        Ok((
            FoundImage {
                uri: format!("{IMAGE_URI_PREFIX}{name}"),
                created: r.get(1)?,
                prompt: r.get(2)?,
                revised_prompt: r.get(3)?,
                provider: r.get(4)?,
                model: r.get(5)?,
                caller: r.get(6)?,
                mime: r.get(7)?,
                bytes: r.get::<_, i64>(8)?.max(0) as u64,
                size: format!("{width}x{height}"),
                width,
                height,
                sha256: r.get(11)?,
                has_sidecar: origin == Origin::Sidecar.as_str(),
                name,
            },
            r.get::<_, i64>(13)?,
        ))
    })?;
    let mut images = Vec::with_capacity(limit as usize + 1);
    let mut last = None;
    for row in rows {
        let (image, id) = row?;
        if images.len() == limit as usize {
            return Ok(FindPage {
                next_cursor: last.map(|c: Cursor| c.encode()),
                images,
            });
        }
        last = Some(Cursor { id });
        images.push(image);
    }
    Ok(FindPage {
        images,
        next_cursor: None,
    })
}

/// `images` as a table for a terminal: time, model, size, name and the prompt's start.
pub fn table(images: &[FoundImage]) -> String {
    if images.is_empty() {
        return "no stored image matches\n".into();
    }
    let width = |f: fn(&FoundImage) -> usize, title: &str| {
        images.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let model = |i: &FoundImage| i.model.as_deref().unwrap_or("-").to_string();
    let model_w = width(|i| i.model.as_deref().map_or(1, str::len), "MODEL");
    let size_w = width(|i| i.size.len(), "SIZE");
    let name_w = width(|i| i.name.len(), "NAME");
    let mut out = format!(
        "{:20}  {:model_w$}  {:size_w$}  {:name_w$}  PROMPT\n",
        "CREATED", "MODEL", "SIZE", "NAME"
    );
    for image in images {
        let created = OffsetDateTime::parse(&image.created, &Rfc3339)
            .ok()
            .and_then(|t| {
                t.to_offset(time::UtcOffset::UTC)
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]"
                    ))
                    .ok()
            })
            .unwrap_or_else(|| image.created.clone());
        // One line per image, whatever the prompt holds.
        let prompt: String = if !image.has_sidecar && image.prompt.is_empty() {
            "(no sidecar)".into()
        } else {
            image
                .prompt
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(60)
                .collect()
        };
        out.push_str(&format!(
            "{created:20}  {:model_w$}  {:size_w$}  {:name_w$}  {prompt}\n",
            model(image),
            image.size,
            image.name,
        ));
    }
    out
}

/// The index of the store at `location`, opened once per process and shared by every call:
/// the file at `path` (or memory, when `None` or when the file cannot be used).
pub fn shared(path: Option<&Path>, location: &str) -> Result<Arc<Index>, IndexError> {
    type Open = Mutex<HashMap<(Option<PathBuf>, String), Arc<Index>>>;
    static OPEN: OnceLock<Open> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (path.map(Path::to_path_buf), location.to_string());
    if let Some(index) = open.get(&key) {
        return Ok(index.clone());
    }
    let index = Arc::new(Index::open_or_memory(path, location)?);
    open.insert(key, index.clone());
    Ok(index)
}

/// An object store's images, for the index: every image there has its sidecar (the store
/// shows none without), so nothing is probed. The index is blocking code on a blocking
/// thread; each look-up waits on the store's async call through `runtime`.
struct ObjectSource {
    store: super::Store,
    runtime: tokio::runtime::Handle,
}

impl SidecarSource for ObjectSource {
    fn location(&self) -> String {
        self.store.to_string()
    }

    fn list(&self, after: Option<OffsetDateTime>) -> io::Result<Listing> {
        // Between full listings (which also tell what was deleted) only the days since the
        // newest indexed image are listed, a day early for replicas' clock skew.
        static FULL: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
        let location = self.location();
        let since = {
            let mut full = FULL.lock().unwrap_or_else(|e| e.into_inner());
            let full = full.get_or_insert_with(HashMap::new);
            let recent = full
                .get(&location)
                .is_some_and(|at| at.elapsed() < FULL_LISTING_EVERY);
            match after.filter(|_| recent) {
                Some(after) => Some(super::day_of_time((after - time::Duration::DAY).into())),
                None => {
                    full.insert(location, Instant::now());
                    None
                }
            }
        };
        let names = self
            .runtime
            .block_on(self.store.names_since(since))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Listing {
            images: names
                .into_iter()
                .map(|name| Listed {
                    name,
                    has_sidecar: true,
                })
                .collect(),
            complete: since.is_none(),
        })
    }

    fn sidecar(&self, name: &str) -> io::Result<Sidecar> {
        self.runtime
            .block_on(self.store.sidecar(name, &super::Viewer::Everyone))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn probe(&self, name: &str) -> io::Result<Sidecar> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{name} has no sidecar in the object store"),
        ))
    }
}

/// Where the index of `store` learns what it holds: its directory, or its object listing.
fn source_of(store: super::Store) -> Box<dyn SidecarSource> {
    match store.local_dir() {
        Some(dir) => Box::new(DirSource::new(dir)),
        None => Box::new(ObjectSource {
            store,
            runtime: tokio::runtime::Handle::current(),
        }),
    }
}

/// Answers `query` from the index of `store` (its file at `index_path`), caught up from the
/// store first, off the async workers: what `find_images` and `images find` call, whatever
/// the backend.
pub async fn search_store(
    index_path: Option<PathBuf>,
    store: super::Store,
    query: FindQuery,
) -> Result<FindPage, ToolError> {
    let source = source_of(store);
    tokio::task::spawn_blocking(move || {
        let index = shared(index_path.as_deref(), &source.location())?;
        index.search(source.as_ref(), &query)
    })
    .await
    .map_err(|e| ToolError::internal(format!("the history search failed: {e}")))?
    .map_err(|e| ToolError::storage(format!("cannot search the history: {e}")))
}

/// Forgets `names` (deleted by retention) in the index of `store` at `index_path`, when that
/// file exists (a missing one is built from the store when first searched).
pub async fn forget_in_store(
    index_path: Option<PathBuf>,
    store: super::Store,
    names: Vec<String>,
) -> Result<(), IndexError> {
    let source = source_of(store);
    tokio::task::spawn_blocking(move || {
        if index_path.as_deref().is_some_and(|p| !p.exists()) {
            return Ok(());
        }
        let index = shared(index_path.as_deref(), &source.location())?;
        for name in &names {
            index.remove(name)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))?
}

/// Rebuilds the index file at `index_path` from everything `store` holds: `images reindex`.
pub async fn reindex_store(
    index_path: PathBuf,
    store: super::Store,
) -> Result<ReindexReport, IndexError> {
    let source = source_of(store);
    tokio::task::spawn_blocking(move || {
        Index::open(&index_path, &source.location())?.reindex(source.as_ref())
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))?
}

#[cfg(test)]
mod tests;
