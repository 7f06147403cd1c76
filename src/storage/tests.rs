//! The store's conformance tests: each runs against the local store, the in-memory store and,
//! when `IMAGEGEN_TEST_S3_ENDPOINT` names an S3-compatible server on loopback, a fresh bucket
//! there (CI starts one; locally the S3 run is skipped, and says so).

use super::*;
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutResult,
};

/// The variable naming the S3-compatible server the tests may use.
pub const S3_ENDPOINT_VAR: &str = "IMAGEGEN_TEST_S3_ENDPOINT";

pub(super) fn png(shade: u8) -> GeneratedImage {
    let img = image::RgbaImage::from_pixel(4, 3, image::Rgba([shade, 2, 3, 255]));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    GeneratedImage::from_encoded(Bytes::from(buf.into_inner())).unwrap()
}

pub(super) fn made_by(caller: Option<&str>, prompt: &str) -> Provenance {
    Provenance {
        caller: caller.map(str::to_string),
        tool: Some("generate_image".into()),
        prompt: prompt.into(),
        ..Provenance::default()
    }
}

/// A fresh bucket on the test S3 server, created with a plain unsigned PUT (the test server
/// does not check signatures).
async fn s3_store() -> Option<Store> {
    let Ok(endpoint) = std::env::var(S3_ENDPOINT_VAR) else {
        eprintln!("{S3_ENDPOINT_VAR} is unset: the S3 run of this test was skipped");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let bucket = format!(
        "imagegen-unit-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the test S3 server answers");
    assert!(
        created.status().is_success(),
        "bucket: {}",
        created.status()
    );
    Some(Store::from_config(Path::new("/nonexistent"), &s3_config(&endpoint, &bucket)).unwrap())
}

/// `[storage]` for `bucket` on the test S3 server.
pub fn s3_config(endpoint: &str, bucket: &str) -> StorageConfig {
    let options = [
        ("endpoint", endpoint),
        ("region", "us-east-1"),
        ("allow_http", "true"),
        ("access_key_id", "testing"),
        ("secret_access_key", "SENTINEL-s3-secret"),
    ];
    StorageConfig {
        url: Some(format!("s3://{bucket}/replicas")),
        options: options
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        shared: false,
        index_path: None,
        ..StorageConfig::default()
    }
}

/// Every backend a store test runs against; the temporary directory lives as long as they do.
pub(super) async fn backends() -> (tempfile::TempDir, Vec<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = vec![Store::new(dir.path().join("nested")), Store::memory()];
    stores.extend(s3_store().await);
    (dir, stores)
}

#[tokio::test]
async fn saves_never_overwrite_and_keep_the_providers_bytes_on_every_backend() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let img = png(1);
        let a = store
            .save(&img, &made_by(None, "A lighthouse, at dusk!"))
            .await
            .unwrap();
        let b = store
            .save(&img, &made_by(None, "A lighthouse, at dusk!"))
            .await
            .unwrap();
        assert_ne!(a.name, b.name, "{store}");
        assert!(a.name.contains("a-lighthouse-at-dusk"), "{}", a.name);
        assert_eq!((a.width, a.height, a.mime.as_str()), (4, 3, "image/png"));
        assert_eq!(a.path.is_some(), store.is_local(), "{store}");
        let (bytes, mime) = store
            .read(&a.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap();
        assert_eq!(mime, "image/png");
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            hex(&Sha256::digest(&img.bytes))
        );
        assert_eq!(a.sha256, hex(&Sha256::digest(&img.bytes)));
        let page = store.list(&Viewer::Everyone, None, 100).await.unwrap();
        assert_eq!(page.images.len(), 2, "{store}");
        assert_eq!(Store::name_from_uri(&a.uri), Some(a.name.as_str()));
    }
}

#[tokio::test]
async fn the_sidecar_records_how_the_image_was_made() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let mut how = made_by(Some("alice"), "a red fox");
        how.prompt_sent = Some("a red fox, photographed".into());
        how.revised_prompt = Some("A red fox in snow".into());
        how.provider = Some("openai".into());
        how.model = Some("gpt-image-1".into());
        how.params.insert("size".into(), "1024x1024".into());
        how.request_id = Some("req_123".into());
        how.inputs = vec!["imagegen://images/x.png".into()];
        let img = png(7);
        let saved = store.save(&img, &how).await.unwrap();
        let viewer = Viewer::Caller("alice".into());
        let sidecar = store.sidecar(&saved.name, &viewer).await.unwrap();
        assert_eq!(sidecar.version, SIDECAR_VERSION);
        assert_eq!(sidecar.name, saved.name);
        assert_eq!(sidecar.sha256, saved.sha256);
        assert_eq!(
            (sidecar.width, sidecar.height, sidecar.bytes),
            (4, 3, img.bytes.len() as u64)
        );
        assert_eq!(sidecar.caller.as_deref(), Some("alice"));
        assert_eq!(sidecar.tool.as_deref(), Some("generate_image"));
        assert_eq!(sidecar.prompt, "a red fox");
        assert_eq!(
            sidecar.prompt_sent.as_deref(),
            Some("a red fox, photographed")
        );
        assert_eq!(sidecar.revised_prompt.as_deref(), Some("A red fox in snow"));
        assert_eq!(sidecar.model.as_deref(), Some("gpt-image-1"));
        assert_eq!(
            sidecar.params.get("size").and_then(|v| v.as_str()),
            Some("1024x1024")
        );
        assert_eq!(sidecar.request_id.as_deref(), Some("req_123"));
        assert_eq!(sidecar.inputs, vec!["imagegen://images/x.png".to_string()]);
        assert!(time::OffsetDateTime::parse(
            &sidecar.created,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
    }
}

#[tokio::test]
async fn a_caller_sees_reads_and_deletes_only_their_own_images() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let alice = store
            .save(&png(1), &made_by(Some("alice"), "a"))
            .await
            .unwrap();
        let bob = store
            .save(&png(2), &made_by(Some("bob"), "b"))
            .await
            .unwrap();
        let (as_alice, as_bob) = (Viewer::Caller("alice".into()), Viewer::Caller("bob".into()));
        let names = |page: Page| page.images.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(
            names(store.list(&as_alice, None, 100).await.unwrap()),
            vec![alice.name.clone()]
        );
        assert_eq!(
            names(store.list(&as_bob, None, 100).await.unwrap()),
            vec![bob.name.clone()]
        );
        assert_eq!(
            store
                .list(&Viewer::Everyone, None, 100)
                .await
                .unwrap()
                .images
                .len(),
            2
        );
        let err = store
            .read(&bob.name, u64::MAX, &as_alice)
            .await
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::NotFound, "{store}");
        let err = store.delete(&bob.name, &as_alice).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::NotFound);
        store.delete(&alice.name, &as_alice).await.unwrap();
        let left = names(store.list(&Viewer::Everyone, None, 100).await.unwrap());
        assert_eq!(left, vec![bob.name.clone()], "{store}");
        let err = store
            .read(&alice.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::NotFound);
    }
}

#[tokio::test]
async fn listings_page_newest_first_with_cursors_and_never_repeat() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let mut made = Vec::new();
        for i in 0..(MAX_PAGE + 7) {
            let saved = store
                .save(&png(i as u8), &made_by(Some("alice"), "p"))
                .await
                .unwrap();
            made.push(saved.name);
        }
        for viewer in [Viewer::Everyone, Viewer::Caller("alice".into())] {
            let first = store.list(&viewer, None, 1000).await.unwrap();
            assert_eq!(first.images.len(), MAX_PAGE, "{store}");
            let cursor = first.next_cursor.clone().expect("a second page");
            let second = store.list(&viewer, Some(&cursor), 1000).await.unwrap();
            assert_eq!(second.images.len(), 7, "{store}");
            assert!(second.next_cursor.is_none());
            let mut seen: Vec<_> = first.images.iter().chain(&second.images).collect();
            assert!(
                seen.windows(2).all(|w| w[0].modified >= w[1].modified),
                "newest first"
            );
            seen.sort_by(|a, b| a.name.cmp(&b.name));
            seen.dedup_by(|a, b| a.name == b.name);
            assert_eq!(seen.len(), made.len(), "no image twice, none missing");
        }
        let err = store
            .list(&Viewer::Everyone, Some("not-a-cursor"), 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Refused);
    }
}

/// An object store around another that counts full listings and, with `fail_sidecars`, fails
/// every sidecar write: how a store that fills up mid-save looks.
#[derive(Debug)]
struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    fail_sidecars: bool,
    lists: Arc<std::sync::atomic::AtomicUsize>,
}

/// `inner`, failing every sidecar write.
fn failing_sidecars(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(Instrumented {
        inner,
        fail_sidecars: true,
        lists: Arc::default(),
    })
}

impl std::fmt::Display for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Instrumented {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail_sidecars && location.as_ref().ends_with(SIDECAR_SUFFIX) {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "no space left on the test store".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_failed_sidecar_leaves_no_orphan_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let local = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let stores = [
        (Store::local_over(dir.path(), failing_sidecars(local)), None),
        (
            Store::over(failing_sidecars(memory.clone()), "memory://"),
            Some(memory),
        ),
    ];
    for (store, raw) in stores {
        let err = store.save(&png(1), &made_by(None, "x")).await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Failed);
        assert!(err.message.contains(&store.to_string()), "{err}");
        let page = store.list(&Viewer::Everyone, None, 100).await.unwrap();
        assert!(page.images.is_empty());
        match raw {
            Some(raw) => {
                let left: Vec<_> = raw.list(None).try_collect().await.unwrap();
                assert!(left.is_empty(), "{left:?}");
            }
            None => {
                let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
                assert!(left.is_empty(), "{left:?}");
            }
        }
    }
}

#[tokio::test]
async fn an_image_without_its_sidecar_is_invisible_and_unreadable() {
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::over(memory.clone(), "memory://");
    let saved = store.save(&png(1), &made_by(None, "whole")).await.unwrap();
    // An image whose sidecar is still being written, as another replica would see it.
    let half = "20261201-120000-half-written-00000000.png";
    memory
        .put(&store.key(half), PutPayload::from(png(2).bytes))
        .await
        .unwrap();
    let page = store.list(&Viewer::Everyone, None, 100).await.unwrap();
    let names: Vec<_> = page.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec![saved.name.as_str()]);
    let err = store
        .read(half, u64::MAX, &Viewer::Everyone)
        .await
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::NotFound);
    assert_eq!(
        store.key(&saved.name).as_ref(),
        format!(
            "images/{}/{}/{}/{}",
            &saved.name[..4],
            &saved.name[4..6],
            &saved.name[6..8],
            saved.name
        )
    );
}

#[tokio::test]
async fn local_images_saved_before_sidecars_stay_listed_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let old = "20250101-000000-before-sidecars-00000000.png";
    std::fs::write(dir.path().join(old), &png(1).bytes).unwrap();
    let past = SystemTime::now() - std::time::Duration::from_secs(3600);
    let file = std::fs::File::options()
        .write(true)
        .open(dir.path().join(old))
        .unwrap();
    file.set_modified(past).unwrap();
    let store = Store::new(dir.path());
    let page = store.list(&Viewer::Everyone, None, 100).await.unwrap();
    assert_eq!(page.images.len(), 1);
    let (bytes, _) = store.read(old, u64::MAX, &Viewer::Everyone).await.unwrap();
    assert_eq!(bytes, png(1).bytes);
    // Nobody's over HTTP: only a viewer who sees everything sees it.
    let viewer = Viewer::Caller("alice".into());
    assert!(store
        .list(&viewer, None, 100)
        .await
        .unwrap()
        .images
        .is_empty());
}

#[tokio::test]
async fn an_unreachable_store_fails_naming_it_without_credentials() {
    // Port 9 (discard) on loopback: nothing listens there.
    let store =
        Store::from_config(Path::new("/x"), &s3_config("http://127.0.0.1:9", "bucket")).unwrap();
    assert_eq!(store.to_string(), "s3://bucket/replicas");
    let err = store.save(&png(1), &made_by(None, "x")).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Failed);
    assert!(err.message.contains("s3://bucket/replicas"), "{err}");
    assert!(!err.message.contains("SENTINEL"), "{err}");
    assert!(!format!("{store:?}").contains("SENTINEL"));
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
        "x.png#1",
    ] {
        assert!(!is_valid_name(bad), "{bad}");
    }
    assert!(Store::name_from_uri("imagegen://images/../../etc/passwd").is_none());
    assert_eq!(
        Store::name_from_meta_uri("imagegen://images/a.png/meta"),
        Some("a.png")
    );
    assert!(Store::name_from_meta_uri("imagegen://images/../a.png/meta").is_none());
}

#[tokio::test]
async fn links_and_special_files_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let saved = store.save(&png(1), &made_by(None, "x")).await.unwrap();
    let link = "20260101-000000-link-00000000.png";
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join(link)).unwrap();
    std::fs::copy(
        dir.path().join(sidecar_name(&saved.name)),
        dir.path().join(sidecar_name(link)),
    )
    .unwrap();
    let err = store
        .read(link, u64::MAX, &Viewer::Everyone)
        .await
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Refused, "{err}");
    assert!(store
        .read("../etc/passwd", u64::MAX, &Viewer::Everyone)
        .await
        .is_err());
}

#[tokio::test]
async fn saved_images_are_flushed_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut saved = Vec::new();
    for _ in 0..20 {
        saved.push(store.save(&png(1), &made_by(None, "x")).await.unwrap());
    }
    flush_saved();
    for image in saved {
        let (bytes, _) = store
            .read(&image.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, image.bytes);
    }
}

#[test]
fn slugs_are_short_and_safe() {
    assert_eq!(slug("   ", 40), "image");
    assert_eq!(slug("Ünïcode & ../../etc", 40), "n-code-etc");
    assert!(slug(&"word ".repeat(50), 40).len() <= 41);
}

#[tokio::test]
async fn gifs_and_svgs_keep_their_extension_mime_bytes_and_frame_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
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
        (&png(1), ".png", "image/png", None),
    ] {
        let saved = store
            .save(image, &made_by(None, "moving picture"))
            .await
            .unwrap();
        assert!(saved.name.ends_with(ext), "{}", saved.name);
        assert_eq!((saved.mime.as_str(), saved.frames), (mime, frames));
        assert_eq!((saved.width, saved.height), (image.width, image.height));
        let (bytes, read_mime) = store
            .read(&saved.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap();
        assert_eq!((&bytes[..], read_mime), (&image.bytes[..], mime));
        let listed = store.list(&Viewer::Everyone, None, 100).await.unwrap();
        let entry = listed.images.iter().find(|e| e.name == saved.name).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_images_saved_at_once_get_distinct_names_and_all_survive() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let img = png(9);
        let how = made_by(None, "ten of the same");
        let saves = (0..10).map(|_| store.save(&img, &how));
        let saved: Vec<_> = futures::future::join_all(saves)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut names: Vec<_> = saved.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10, "{store}: {names:?}");
        for name in &names {
            let (bytes, _) = store.read(name, u64::MAX, &Viewer::Everyone).await.unwrap();
            assert_eq!(bytes, img.bytes);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_is_one_change_and_a_later_one_another() {
    let (tx, mut changes) = tokio::sync::broadcast::channel(4);
    for _ in 0..10 {
        let _ = tx.send(());
    }
    // Ten changes, more than the channel holds: one notice, the lag swallowed.
    assert!(super::next_change(&mut changes).await);
    let waiting = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        super::next_change(&mut changes),
    );
    assert!(waiting.await.is_err(), "nothing more changed");
    let _ = tx.send(());
    assert!(super::next_change(&mut changes).await);
    drop(tx);
    assert!(!super::next_change(&mut changes).await, "no sender left");
}

#[tokio::test]
async fn an_object_store_is_listed_a_day_at_a_time_newest_day_first() {
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = Store::over(
        Arc::new(Instrumented {
            inner: memory.clone(),
            fail_sidecars: false,
            lists: lists.clone(),
        }),
        "memory://",
    );
    // Three images saved today, then each copied under two earlier days, as another replica
    // on those days would have stored them.
    let mut today = Vec::new();
    for i in 0..3 {
        today.push(store.save(&png(i), &made_by(None, "p")).await.unwrap());
    }
    let mut all: Vec<String> = today.iter().map(|s| s.name.clone()).collect();
    for day in ["20261129", "20261130"] {
        for saved in &today {
            let name = format!("{day}{}", &saved.name[8..]);
            let bytes = memory.get(&store.key(&saved.name)).await.unwrap();
            let bytes = bytes.bytes().await.unwrap();
            memory.put(&store.key(&name), bytes.into()).await.unwrap();
            let mut sidecar = store.sidecar(&saved.name, &Viewer::Everyone).await.unwrap();
            sidecar.name = name.clone();
            let json = serde_json::to_vec(&sidecar).unwrap();
            memory
                .put(&store.key(&sidecar_name(&name)), json.into())
                .await
                .unwrap();
            all.push(name);
        }
    }
    let listed_before = lists.load(std::sync::atomic::Ordering::Relaxed);
    let first = store.list(&Viewer::Everyone, None, 2).await.unwrap();
    assert_eq!(
        lists.load(std::sync::atomic::Ordering::Relaxed) - listed_before,
        1,
        "the first page lists only today"
    );
    let mut seen: Vec<String> = first.images.iter().map(|i| i.name.clone()).collect();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = store.list(&Viewer::Everyone, Some(&c), 2).await.unwrap();
        seen.extend(page.images.iter().map(|i| i.name.clone()));
        cursor = page.next_cursor;
    }
    let days: Vec<&str> = seen.iter().map(|n| &n[..8]).collect();
    let mut newest_first = days.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(days, newest_first, "newest day first: {seen:?}");
    let mut expected = all.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "every image once");
    let mut recent = store.names_since(Some(20261130)).await.unwrap();
    recent.sort();
    assert_eq!(recent.len(), 6, "{recent:?}");
    assert!(recent.iter().all(|n| !n.starts_with("20261129")));
    assert_eq!(store.names_since(None).await.unwrap().len(), 9);
}

#[tokio::test]
async fn embedding_writes_the_prompt_into_the_stored_file_and_records_both_hashes() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let img = png(5);
        let upstream = hex(&Sha256::digest(&img.bytes));
        let mut how = made_by(None, "a fox in the snow");
        how.embed_metadata = true;
        let saved = store.save(&img, &how).await.unwrap();
        let (stored, _) = store
            .read(&saved.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap();
        assert_ne!(stored, img.bytes);
        assert_eq!(saved.sha256, hex(&Sha256::digest(&stored)));
        assert_eq!(saved.bytes, stored.len() as u64);
        let texts = png::Decoder::new(std::io::Cursor::new(&stored[..]))
            .read_info()
            .unwrap()
            .info()
            .utf8_text
            .iter()
            .map(|c| c.get_text().unwrap())
            .collect::<Vec<_>>();
        assert!(texts.iter().any(|t| t == "a fox in the snow"), "{texts:?}");
        assert!(texts.iter().any(|t| t.contains(&saved.uri)), "{texts:?}");
        let sidecar = store.sidecar(&saved.name, &Viewer::Everyone).await.unwrap();
        assert_eq!(sidecar.sha256, saved.sha256);
        assert_eq!(sidecar.upstream_sha256.as_deref(), Some(upstream.as_str()));
        assert_eq!(sidecar.bytes, stored.len() as u64);
        assert!(
            sidecar
                .notes
                .iter()
                .any(|n| n.contains("metadata embedded")),
            "{:?}",
            sidecar.notes
        );
    }
}

#[tokio::test]
async fn a_file_with_a_c2pa_manifest_is_stored_as_sent_with_a_note() {
    let (_dir, stores) = backends().await;
    // A PNG with a caBX chunk (the C2PA manifest store's chunk) before its image data.
    let plain = png(6);
    let mut marked = plain.bytes[..33].to_vec();
    let jumbf = b"\0\0\0\x10jumb\0\0\0\x08jumdc2pa";
    marked.extend_from_slice(&(jumbf.len() as u32).to_be_bytes());
    let start = marked.len();
    marked.extend_from_slice(b"caBX");
    marked.extend_from_slice(jumbf);
    let crc = crc32fast::hash(&marked[start..]);
    marked.extend_from_slice(&crc.to_be_bytes());
    marked.extend_from_slice(&plain.bytes[33..]);
    let img = GeneratedImage::from_encoded(Bytes::from(marked)).unwrap();
    for store in stores {
        let mut how = made_by(None, "signed");
        how.embed_metadata = true;
        let saved = store.save(&img, &how).await.unwrap();
        let (stored, _) = store
            .read(&saved.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap();
        assert_eq!(stored, img.bytes);
        assert_eq!(saved.sha256, hex(&Sha256::digest(&img.bytes)));
        let sidecar = store.sidecar(&saved.name, &Viewer::Everyone).await.unwrap();
        assert_eq!(sidecar.upstream_sha256, None);
        assert!(
            sidecar
                .notes
                .iter()
                .any(|n| n.starts_with("metadata not embedded") && n.contains("C2PA")),
            "{:?}",
            sidecar.notes
        );
    }
}

#[tokio::test]
async fn with_embedding_off_the_stored_file_is_the_providers_and_the_sidecar_says_nothing_of_it() {
    let (_dir, stores) = backends().await;
    for store in stores {
        let img = png(8);
        let saved = store.save(&img, &made_by(None, "plain")).await.unwrap();
        let (stored, _) = store
            .read(&saved.name, u64::MAX, &Viewer::Everyone)
            .await
            .unwrap();
        assert_eq!(stored, img.bytes);
        let sidecar = store.sidecar(&saved.name, &Viewer::Everyone).await.unwrap();
        assert_eq!(sidecar.upstream_sha256, None);
        assert!(sidecar.notes.is_empty(), "{:?}", sidecar.notes);
    }
}
