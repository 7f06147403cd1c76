//! Retention against real files, the in-memory store and (when `IMAGEGEN_TEST_S3_ENDPOINT`
//! is set) a real S3-compatible server: what it deletes, and everything it never touches.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt as _, PutPayload};

use super::{hash_candidates, Policy, PruneReport, Reason};
use crate::storage::{
    hex,
    sidecar::sidecar_name,
    tests::{backends, made_by, png},
    Backend, Store, Viewer,
};

const DAY: Duration = Duration::from_secs(86_400);

fn object_parts(store: &Store) -> Option<(Arc<dyn ObjectStore>, ObjectPath)> {
    match &store.inner.backend {
        Backend::Object { store, root, .. } => Some((store.clone(), root.clone())),
        Backend::Local { .. } => None,
    }
}

/// Writes `bytes` as `name` where the store keeps that name, behind the store's back.
async fn plant(store: &Store, name: &str, bytes: &[u8]) {
    match store.local_dir() {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        None => {
            let (raw, _) = object_parts(store).unwrap();
            raw.put(&store.key(name), PutPayload::from(bytes.to_vec()))
                .await
                .unwrap();
        }
    }
}

/// Whether `name` is still where the store keeps it.
async fn exists(store: &Store, name: &str) -> bool {
    match store.local_dir() {
        Some(dir) => std::fs::symlink_metadata(dir.join(name)).is_ok(),
        None => {
            let (raw, _) = object_parts(store).unwrap();
            raw.head(&store.key(name)).await.is_ok()
        }
    }
}

/// Saves an image and rewrites its sidecar's `created` to `age` ago: an old image, no sleeping.
async fn saved_aged(store: &Store, shade: u8, prompt: &str, age: Duration) -> String {
    let saved = store
        .save(&png(shade), &made_by(None, prompt))
        .await
        .unwrap();
    let mut sidecar = store.sidecar(&saved.name, &Viewer::Everyone).await.unwrap();
    sidecar.created = super::rfc3339(SystemTime::now() - age);
    let json = serde_json::to_vec_pretty(&sidecar).unwrap();
    plant(store, &sidecar_name(&saved.name), &json).await;
    saved.name
}

fn names(report: &PruneReport) -> BTreeSet<String> {
    report.pruned.iter().map(|p| p.name.clone()).collect()
}

fn set_old(path: &std::path::Path) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - 400 * DAY).unwrap();
}

#[tokio::test]
async fn retention_never_touches_what_it_did_not_write() {
    let (dir, stores) = backends().await;
    for store in stores {
        let old = saved_aged(&store, 1, "old one", 10 * DAY).await;
        let fresh = saved_aged(&store, 2, "fresh one", Duration::ZERO).await;
        let image = png(9).bytes.to_vec();
        let mut foreign = vec![
            "notes.txt".to_string(),
            // A name `save` makes, but the hash is not its content's.
            "20200101-000000-lookalike-deadbeef.png".to_string(),
            "gone.png.json".to_string(),
            "borrowed.png".to_string(),
            "borrowed.png.json".to_string(),
        ];
        plant(&store, &foreign[0], b"keep me").await;
        plant(&store, &foreign[1], &image).await;
        // A sidecar without its image, saying it is ancient.
        let mut orphan = store.sidecar(&old, &Viewer::Everyone).await.unwrap();
        orphan.name = "gone.png".into();
        plant(&store, &foreign[2], &serde_json::to_vec(&orphan).unwrap()).await;
        // An image beside a copy of another image's sidecar.
        let copied = store.sidecar(&old, &Viewer::Everyone).await.unwrap();
        plant(&store, &foreign[3], &image).await;
        plant(&store, &foreign[4], &serde_json::to_vec(&copied).unwrap()).await;
        // An old image of ours, replaced since by other bytes: the sidecar no longer fits it.
        let replaced = saved_aged(&store, 3, "replaced", 10 * DAY).await;
        plant(&store, &replaced, &png(200).bytes.repeat(2)).await;
        foreign.push(replaced.clone());
        let mut outside = None;
        if let Some(local) = store.local_dir() {
            for name in &foreign[1..] {
                set_old(&local.join(name));
            }
            // A link under a name `save` makes, with the hash of what it points to, outside.
            let target = dir.path().join("outside.png");
            std::fs::write(&target, &image).unwrap();
            let hash8 = &hex(&<sha2::Sha256 as sha2::Digest>::digest(&image))[..8];
            let link = format!("20200101-000000-link-{hash8}.png");
            std::os::unix::fs::symlink(&target, local.join(&link)).unwrap();
            foreign.push(link);
            let dir_name = format!("20200101-000000-dir-{hash8}.png");
            std::fs::create_dir(local.join(&dir_name)).unwrap();
            foreign.push(dir_name);
            // A fresh file named as a save with the right hash: possibly a save in progress.
            let pending = format!("20200101-000000-pending-{hash8}.png");
            std::fs::write(local.join(&pending), &image).unwrap();
            foreign.push(pending);
            outside = Some(target);
        }
        if let Some((raw, root)) = object_parts(&store) {
            // Keys elsewhere in the bucket, one of them under a name of ours.
            for key in [
                ObjectPath::from("elsewhere/20200101-000000-x-12345678.png"),
                root.clone().join("extra").join(old.as_str()),
            ] {
                raw.put(&key, PutPayload::from(image.clone()))
                    .await
                    .unwrap();
            }
        }
        // Ours from before sidecars: the name's hash is its content's (local only).
        let legacy = store.local_dir().map(|local| {
            let hash8 = &hex(&<sha2::Sha256 as sha2::Digest>::digest(&image))[..8];
            let name = format!("20200101-000000-from-before-{hash8}-2.png");
            std::fs::write(local.join(&name), &image).unwrap();
            set_old(&local.join(&name));
            name
        });

        let policy = Policy::of(Some(1), None);
        let dry = store.prune(&policy, SystemTime::now(), true).await.unwrap();
        let mut expected: BTreeSet<String> = [old.clone()].into();
        expected.extend(legacy.clone());
        assert_eq!(names(&dry), expected, "{store}");
        assert!(dry.dry_run && dry.failed.is_empty());
        assert!(exists(&store, &old).await, "a dry run deleted {old}");
        let real = store
            .prune(&policy, SystemTime::now(), false)
            .await
            .unwrap();
        assert_eq!(names(&real), names(&dry), "{store}");
        assert!(real.pruned.iter().all(|p| p.reason == Reason::MaxAge));
        assert!(!exists(&store, &old).await && !exists(&store, &sidecar_name(&old)).await);
        if let Some(legacy) = &legacy {
            assert!(!exists(&store, legacy).await);
        }
        assert!(exists(&store, &fresh).await && exists(&store, &sidecar_name(&fresh)).await);
        for name in &foreign {
            assert!(exists(&store, name).await, "{store}: {name} was deleted");
        }
        if let Some(target) = outside {
            assert_eq!(std::fs::read(target).unwrap(), image);
        }
        if let Some((raw, root)) = object_parts(&store) {
            assert!(raw
                .head(&ObjectPath::from(
                    "elsewhere/20200101-000000-x-12345678.png"
                ))
                .await
                .is_ok());
            assert!(raw
                .head(&root.join("extra").join(old.as_str()))
                .await
                .is_ok());
        }
        // Nothing more to do: a second pass deletes nothing.
        let again = store
            .prune(&policy, SystemTime::now(), false)
            .await
            .unwrap();
        assert!(again.pruned.is_empty(), "{again:?}");
    }
}

#[tokio::test]
async fn max_total_deletes_the_oldest_and_keeps_the_newest() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let mut made = Vec::new();
        for (i, days) in [4u32, 3, 2, 1].into_iter().enumerate() {
            made.push(saved_aged(&store, 10 + i as u8, "sized", DAY * days).await);
        }
        let all = store
            .prune(
                &Policy::of(None, Some(u64::MAX / 1_000_000)),
                SystemTime::now(),
                true,
            )
            .await
            .unwrap();
        assert!(all.pruned.is_empty() && all.kept == 4, "{all:?}");
        // Room for a little more than the newest two.
        let sizes = {
            let listing = store.retention_entries().await.unwrap();
            let size = |name: &str| {
                let of = |n: &str| listing.iter().find(|e| e.name == n).unwrap().bytes;
                of(name) + of(&sidecar_name(name))
            };
            made.iter().map(|n| size(n)).collect::<Vec<_>>()
        };
        let policy = Policy {
            max_age: None,
            max_total_bytes: Some(sizes[2] + sizes[3] + 1),
        };
        let dry = store.prune(&policy, SystemTime::now(), true).await.unwrap();
        let oldest: BTreeSet<String> = made[..2].iter().cloned().collect();
        assert_eq!(names(&dry), oldest, "{store}");
        for name in &made {
            assert!(exists(&store, name).await, "the dry run deleted {name}");
        }
        let real = store
            .prune(&policy, SystemTime::now(), false)
            .await
            .unwrap();
        assert_eq!(names(&real), oldest);
        assert_eq!(real.pruned_bytes, sizes[0] + sizes[1]);
        assert!(real.pruned.iter().all(|p| p.reason == Reason::MaxTotal));
        assert_eq!((real.kept, real.kept_bytes), (2, sizes[2] + sizes[3]));
        for name in &made[2..] {
            assert!(exists(&store, name).await, "{name} is among the newest");
        }
    }
}

#[tokio::test]
async fn replicas_pruning_one_store_at_once_do_no_harm() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let mut old = BTreeSet::new();
        for shade in 20..26 {
            old.insert(saved_aged(&store, shade, "shared", 30 * DAY).await);
        }
        let kept = saved_aged(&store, 30, "kept", Duration::ZERO).await;
        let policy = Policy::of(Some(7), None);
        let replica = store.clone();
        let (a, b) = tokio::join!(
            store.prune(&policy, SystemTime::now(), false),
            replica.prune(&policy, SystemTime::now(), false)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.failed.is_empty() && b.failed.is_empty(), "{a:?} {b:?}");
        let gone: BTreeSet<String> = names(&a).union(&names(&b)).cloned().collect();
        assert_eq!(gone, old, "{store}");
        for name in &old {
            assert!(!exists(&store, name).await);
        }
        assert!(exists(&store, &kept).await);
    }
}

#[tokio::test]
async fn a_policy_that_keeps_everything_reads_nothing() {
    let store = Store::memory();
    saved_aged(&store, 1, "ancient", 1000 * DAY).await;
    let report = store
        .prune(&Policy::default(), SystemTime::now(), false)
        .await
        .unwrap();
    assert_eq!(report, PruneReport::default());
}

#[test]
fn only_names_save_makes_carry_a_hash_to_check() {
    assert_eq!(
        hash_candidates("20261201-101500-a-red-fox-1a2b3c4d.png"),
        ["1a2b3c4d"]
    );
    assert_eq!(
        hash_candidates("20261201-101500-a-red-fox-1a2b3c4d-3.png"),
        ["1a2b3c4d"]
    );
    // Both readings are checked: the hash must match the content either way.
    assert_eq!(
        hash_candidates("20261201-101500-x-1a2b3c4d-12345678.png"),
        ["12345678", "1a2b3c4d"]
    );
    for other in [
        "cat.png",
        "20261201-101500-1a2b3c4d.png",
        "20261201-101500-x-1A2B3C4D.png",
        "2026120-101500-x-1a2b3c4d.png",
        "20261201_101500-x-1a2b3c4d.png",
        "20261201-101500-x-1a2b3c4.png",
    ] {
        assert!(hash_candidates(other).is_empty(), "{other}");
    }
}
