//! Retention (off by default): `storage.max_age_days` and `storage.max_total_mb`, applied by
//! `imagegen-mcp images prune` and, every `storage.prune_interval_min`, by a running server.
//!
//! Only the server's own images are ever deleted. An image is its own when its sidecar is one
//! the server wrote for it (it parses, names this very image, and its `bytes` are the file's
//! size), or, for an image saved before sidecars, when its name is one [`Store::save`] makes
//! (`YYYYMMDD-HHMMSS-slug-hash8.ext`) and the hash8 is its content's. Everything else in the
//! folder or bucket — other files, lookalike names, links, directories, sidecars without an
//! image, temporary files, saves younger than [`GRACE`] — is left alone.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{
    hex, image_of_sidecar, is_valid_name, local_entries, sidecar::Sidecar, Backend, Entry, Store,
    StoreError, StoreErrorKind,
};
use crate::config::StorageConfig;

/// How often a running server applies retention when `storage.prune_interval_min` is unset.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Images younger than this are never deleted: a save may still be writing its sidecar, and
/// a caller has just been handed the link.
pub const GRACE: Duration = Duration::from_secs(60);

/// The largest image read to check the hash in its name (an image without a sidecar).
const MAX_HASHED_BYTES: u64 = 512 << 20;

/// Bytes in one `max_total_mb` (as in `output.max_read_mb`).
const MB: u64 = 1_000_000;

/// What retention keeps: nothing is deleted when both limits are unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Own images older than this go.
    pub max_age: Option<Duration>,
    /// The oldest own images go until the rest (images and sidecars) take at most this.
    pub max_total_bytes: Option<u64>,
}

impl Policy {
    /// The policy `[storage]` configures.
    pub fn from_config(config: &StorageConfig) -> Self {
        Self::of(config.max_age_days, config.max_total_mb)
    }

    /// The policy of `max_age_days` and `max_total_mb`.
    pub fn of(max_age_days: Option<u64>, max_total_mb: Option<u64>) -> Self {
        Self {
            max_age: max_age_days.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
            max_total_bytes: max_total_mb.map(|mb| mb.saturating_mul(MB)),
        }
    }

    /// Whether this policy keeps everything.
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.max_total_bytes.is_none()
    }
}

/// How often a running server applies `config`'s retention.
pub fn interval(config: &StorageConfig) -> Duration {
    config
        .prune_interval_min
        .map_or(DEFAULT_INTERVAL, |m| Duration::from_secs(m.max(1) * 60))
}

/// Why an image goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Older than `max_age_days`.
    MaxAge,
    /// Among the oldest while the own images took more than `max_total_mb`.
    MaxTotal,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MaxAge => "older than max_age_days",
            Self::MaxTotal => "over max_total_mb",
        })
    }
}

/// One image retention deletes (or, in a dry run, would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// The image's name.
    pub name: String,
    /// The image's and its sidecar's bytes.
    pub bytes: u64,
    /// When it was made (the sidecar's `created`, else the file's time), RFC 3339.
    pub created: String,
    /// Why it goes.
    pub reason: Reason,
}

/// What one pass of retention did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Nothing was deleted: `pruned` is what would have gone.
    pub dry_run: bool,
    /// The images deleted (or that would be), oldest first.
    pub pruned: Vec<Pruned>,
    /// Their bytes, sidecars included.
    pub pruned_bytes: u64,
    /// Own images kept.
    pub kept: usize,
    /// Their bytes, sidecars included.
    pub kept_bytes: u64,
    /// Images under a store name that are not the server's own, left alone.
    pub not_own: usize,
    /// Images that could not be deleted, with the reason (another replica's deletion is not one).
    pub failed: Vec<String>,
}

/// One of the server's own images.
#[derive(Debug, Clone)]
struct Own {
    name: String,
    bytes: u64,
    created: SystemTime,
    /// Made less than [`GRACE`] ago: it takes its room in the total but is never deleted.
    young: bool,
}

/// Whether an image is the server's own, as far as retention is concerned.
enum Ownership {
    Own(Own),
    /// Not the server's, or not decidable now (unreadable, or too young to tell): left alone.
    NotOwn,
    /// An image without a sidecar that this policy would keep even if it were ours: its
    /// content is not hashed (a whole read per image per pass), and it counts for nothing.
    Unchecked,
}

/// The hash8s a name made by [`Store::save`] may carry: `...-hash8.ext` or `...-hash8-N.ext`
/// (a suffix after a clash); empty for any other name.
fn hash_candidates(name: &str) -> Vec<&str> {
    let Some(stem) = name.rsplit_once('.').map(|(stem, _)| stem) else {
        return Vec::new();
    };
    let bytes = stem.as_bytes();
    let stamped = bytes.len() > 16
        && bytes[..8].iter().all(u8::is_ascii_digit)
        && bytes[8] == b'-'
        && bytes[9..15].iter().all(u8::is_ascii_digit)
        && bytes[15] == b'-';
    if !stamped {
        return Vec::new();
    }
    let hash8 = |s: &str| s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parts: Vec<&str> = stem[16..].split('-').collect();
    let mut out = Vec::new();
    // At least a slug before the hash: `stamp-slug-hash8`.
    if parts.len() >= 2 && hash8(parts[parts.len() - 1]) {
        out.push(parts[parts.len() - 1]);
    }
    if parts.len() >= 3
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && hash8(parts[parts.len() - 2])
    {
        out.push(parts[parts.len() - 2]);
    }
    out
}

fn rfc3339(time: SystemTime) -> String {
    OffsetDateTime::from(time)
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl Store {
    /// The image and sidecar files of the store, each at exactly the key its name maps to.
    async fn retention_entries(&self) -> Result<Vec<Entry>, StoreError> {
        match &self.inner.backend {
            Backend::Local { dir, .. } => {
                // Regular files only, never following a link: a link or a directory under an
                // image's name is not an image of ours.
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || local_entries(&dir))
                    .await
                    .map_err(|e| self.failed("listing images", e))?
                    .map_err(|e| self.failed("listing images", e))
            }
            Backend::Object { store, root, .. } => store
                .list(Some(root))
                .try_filter_map(|meta| async move {
                    let name = meta.location.filename().unwrap_or_default().to_string();
                    let wanted = is_valid_name(&name) || image_of_sidecar(&name).is_some();
                    // An object elsewhere under the root that shares a name is someone else's:
                    // reads and deletes go to the name's own key only.
                    let at_its_key = wanted && meta.location == self.key(&name);
                    Ok(at_its_key.then(|| Entry {
                        name,
                        bytes: meta.size,
                        modified: SystemTime::from(meta.last_modified),
                    }))
                })
                .try_collect()
                .await
                .map_err(|e| self.failed("listing images", e)),
        }
    }

    /// Whether image `entry` (with a sidecar of `sidecar_bytes`, if there is one) is ours.
    async fn ownership(
        &self,
        entry: Entry,
        sidecar_bytes: Option<u64>,
        now: SystemTime,
        policy: &Policy,
    ) -> Ownership {
        let young = |time: SystemTime| now.duration_since(time).map_or(true, |age| age < GRACE);
        if let Some(sidecar_bytes) = sidecar_bytes {
            let Ok(raw) = self.read_sidecar_bytes(&entry.name).await else {
                return Ownership::NotOwn;
            };
            let Ok(sidecar) = serde_json::from_slice::<Sidecar>(&raw) else {
                return Ownership::NotOwn;
            };
            if sidecar.name != entry.name || sidecar.bytes != entry.bytes {
                return Ownership::NotOwn;
            }
            let created = OffsetDateTime::parse(&sidecar.created, &Rfc3339)
                .map(SystemTime::from)
                .unwrap_or(entry.modified);
            return Ownership::Own(Own {
                name: entry.name.clone(),
                bytes: entry.bytes + sidecar_bytes,
                created,
                young: young(created),
            });
        }
        let candidates = hash_candidates(&entry.name);
        if candidates.is_empty() {
            return Ownership::NotOwn;
        }
        if young(entry.modified) {
            // Possibly a save still writing its sidecar: what it is becomes clear later.
            return Ownership::NotOwn;
        }
        let age = now.duration_since(entry.modified).unwrap_or_default();
        if policy.max_total_bytes.is_none() && policy.max_age.is_some_and(|max| age <= max) {
            return Ownership::Unchecked;
        }
        let read = match &self.inner.backend {
            Backend::Local { dir, .. } => self
                .read_local(dir.join(&entry.name), entry.name.clone(), MAX_HASHED_BYTES)
                .await
                .map(bytes::Bytes::from),
            Backend::Object { store, .. } => {
                self.read_object(store, &self.key(&entry.name), &entry.name, MAX_HASHED_BYTES)
                    .await
            }
        };
        let Ok(bytes) = read else {
            return Ownership::NotOwn;
        };
        let sha256 = hex(&Sha256::digest(&bytes));
        if bytes.len() as u64 != entry.bytes || !candidates.iter().any(|c| sha256.starts_with(c)) {
            return Ownership::NotOwn;
        }
        Ownership::Own(Own {
            name: entry.name.clone(),
            bytes: entry.bytes,
            created: entry.modified,
            young: false,
        })
    }

    /// Applies `policy` to the server's own images as of `now`: deletes (unless `dry_run`)
    /// those older than its age and then the oldest until the rest fit its total. Another
    /// process deleting the same image first is no failure.
    pub async fn prune(
        &self,
        policy: &Policy,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport {
            dry_run,
            ..PruneReport::default()
        };
        if policy.is_off() {
            return Ok(report);
        }
        let entries = self.retention_entries().await?;
        let sidecars: HashMap<&str, u64> = entries
            .iter()
            .filter_map(|e| image_of_sidecar(&e.name).map(|image| (image, e.bytes)))
            .collect();
        // Owned entries: a future borrowing its entry is not `Send` for every lifetime.
        let images: Vec<(Entry, Option<u64>)> = entries
            .iter()
            .filter(|e| is_valid_name(&e.name))
            .map(|e| (e.clone(), sidecars.get(e.name.as_str()).copied()))
            .collect();
        let checked: Vec<Ownership> = futures::stream::iter(images)
            .map(|(entry, sidecar_bytes)| self.ownership(entry, sidecar_bytes, now, policy))
            .buffered(16)
            .collect()
            .await;
        let mut own = Vec::new();
        for ownership in checked {
            match ownership {
                Ownership::Own(o) => own.push(o),
                Ownership::NotOwn => report.not_own += 1,
                Ownership::Unchecked => {}
            }
        }
        own.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        let mut total: u64 = own.iter().map(|o| o.bytes).sum();
        let mut going = Vec::new();
        for image in own {
            let age = now.duration_since(image.created).unwrap_or_default();
            let reason = if image.young {
                None
            } else if policy.max_age.is_some_and(|max| age > max) {
                Some(Reason::MaxAge)
            } else if policy.max_total_bytes.is_some_and(|max| total > max) {
                Some(Reason::MaxTotal)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    total -= image.bytes;
                    going.push((image, reason));
                }
                None => {
                    report.kept += 1;
                    report.kept_bytes += image.bytes;
                }
            }
        }
        for (image, reason) in going {
            if !dry_run {
                match self.remove(&image.name).await {
                    Ok(()) => {}
                    // Another replica pruned it first.
                    Err(e) if e.kind == StoreErrorKind::NotFound => {}
                    Err(e) => {
                        report.failed.push(format!("{}: {e}", image.name));
                        report.kept += 1;
                        report.kept_bytes += image.bytes;
                        continue;
                    }
                }
            }
            report.pruned_bytes += image.bytes;
            report.pruned.push(Pruned {
                name: image.name,
                bytes: image.bytes,
                created: rfc3339(image.created),
                reason,
            });
        }
        Ok(report)
    }
}

/// Applies `policy` to `store` and forgets what it deleted in the history index at
/// `index_path` (when that file exists): what `images prune` and a running server call.
pub async fn apply(
    store: &Store,
    index_path: Option<PathBuf>,
    policy: &Policy,
    dry_run: bool,
) -> Result<PruneReport, StoreError> {
    let report = store.prune(policy, SystemTime::now(), dry_run).await?;
    if !dry_run && !report.pruned.is_empty() {
        let names = report.pruned.iter().map(|p| p.name.clone()).collect();
        // The index is derived: a failure here is mended by its next catch-up.
        if let Err(e) = super::index::forget_in_store(index_path, store.clone(), names).await {
            tracing::warn!(store = %store, "retention could not update the history index: {e}");
        }
    }
    Ok(report)
}

/// Applies the retention of the configuration `current` returns at once and then every
/// `storage.prune_interval_min`, for as long as the server runs; logs each pass that deleted
/// something at info (count and bytes; the store by its shown name, never its credentials).
pub async fn run_periodically<F>(current: F)
where
    F: Fn() -> (Store, StorageConfig) + Send + Sync,
{
    loop {
        let (store, config) = current();
        let policy = Policy::from_config(&config);
        if !policy.is_off() {
            match apply(&store, config.index_path.clone(), &policy, false).await {
                Ok(report) => {
                    if !report.pruned.is_empty() || !report.failed.is_empty() {
                        tracing::info!(
                            store = %store,
                            count = report.pruned.len(),
                            bytes = report.pruned_bytes,
                            kept = report.kept,
                            failed = report.failed.len(),
                            "retention deleted old images"
                        );
                    }
                    for failure in &report.failed {
                        tracing::warn!("retention could not delete {failure}");
                    }
                }
                Err(e) => tracing::warn!("retention failed: {e}"),
            }
        }
        tokio::time::sleep(interval(&config)).await;
    }
}

#[cfg(test)]
mod tests;
