//! The history index against real SQLite files and real directories.

use std::{
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;

/// A PNG of `width` x `height`, for images without sidecars.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(width, height, image::Rgba([9, 8, 7, 255]));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// A sidecar as the store writes it.
fn sidecar(name: &str, prompt: &str, model: &str, created: &str) -> Sidecar {
    Sidecar {
        version: SIDECAR_VERSION,
        name: name.into(),
        mime: "image/png".into(),
        bytes: 100,
        sha256: "ab".repeat(32),
        upstream_sha256: None,
        width: 1024,
        height: 1024,
        frames: None,
        created: created.into(),
        caller: None,
        tool: Some("generate_image".into()),
        prompt: prompt.into(),
        prompt_sent: None,
        preset: None,
        revised_prompt: None,
        provider: Some("mock".into()),
        model: Some(model.into()),
        params: Default::default(),
        usage: None,
        request_id: None,
        inputs: Vec::new(),
        notes: Vec::new(),
        filename_requested: None,
    }
}

/// Writes image `name` into `dir` with its sidecar, as another replica would.
fn store(dir: &Path, sidecar: &Sidecar) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(&sidecar.name), png(2, 2)).unwrap();
    fs::write(
        dir.join(sidecar_name(&sidecar.name)),
        serde_json::to_vec(sidecar).unwrap(),
    )
    .unwrap();
}

fn query(words: &str) -> FindQuery {
    FindParams {
        query: Some(words.into()),
        ..FindParams::default()
    }
    .to_query(None)
    .unwrap()
}

fn names(page: &FindPage) -> Vec<&str> {
    page.images.iter().map(|i| i.name.as_str()).collect()
}

/// An index over `dir` that catches up at every query (the once-a-second bound has its own
/// test).
fn eager(path: &Path, dir: &Path) -> (Index, DirSource) {
    let source = DirSource::new(dir);
    let index = Index::open(path, &source.location())
        .unwrap()
        .with_catch_up_every(Duration::ZERO);
    (index, source)
}

/// Three images of different prompts, models and days.
fn three() -> Vec<Sidecar> {
    vec![
        sidecar(
            "20261120-090000-a-red-fox-11111111.png",
            "A red fox in the snow, lighthouses behind",
            "gpt-image-1",
            "2026-11-20T09:00:00Z",
        ),
        sidecar(
            "20261125-090000-a-blue-whale-22222222.png",
            "A blue whale under a lighthouse",
            "gpt-image-2",
            "2026-11-25T09:00:00Z",
        ),
        sidecar(
            "20261201-090000-a-green-fox-33333333.png",
            "A green fox with a \"quoted\" hat",
            "gpt-image-2",
            "2026-12-01T09:00:00+01:00",
        ),
    ]
}

#[test]
fn fts5_is_compiled_into_the_bundled_sqlite() {
    let conn = Connection::open_in_memory().unwrap();
    let enabled: bool = conn
        .query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(enabled);
}

#[test]
fn finds_by_words_model_provider_and_date_newest_first() {
    let index = Index::memory("test").unwrap();
    for s in three() {
        index.upsert(&s).unwrap();
    }
    let find = |q: FindQuery| names(&index.find(&q).unwrap()).join(" ");
    // Both foxes, newest first; stemming finds "lighthouses" and "lighthouse" alike.
    assert_eq!(
        find(query("fox")),
        "20261201-090000-a-green-fox-33333333.png 20261120-090000-a-red-fox-11111111.png"
    );
    assert_eq!(find(query("Lighthouse")).matches(".png").count(), 2);
    assert_eq!(
        find(query("fox snow")),
        "20261120-090000-a-red-fox-11111111.png"
    );
    assert_eq!(find(query("fox whale")), "");
    let by = |f: fn(&mut FindParams)| {
        let mut params = FindParams::default();
        f(&mut params);
        find(params.to_query(None).unwrap())
    };
    assert_eq!(
        by(|p| p.model = Some("GPT-IMAGE-1".into())),
        "20261120-090000-a-red-fox-11111111.png"
    );
    assert_eq!(
        by(|p| p.provider = Some("mock".into()))
            .matches(".png")
            .count(),
        3
    );
    assert_eq!(by(|p| p.provider = Some("openai".into())), "");
    // A day as `until` covers the whole day; `since` starts at its midnight (UTC).
    assert_eq!(
        by(|p| {
            p.since = Some("2026-11-21".into());
            p.until = Some("2026-11-30".into());
        }),
        "20261125-090000-a-blue-whale-22222222.png"
    );
    assert_eq!(
        by(|p| p.until = Some("2026-11-25".into()))
            .matches(".png")
            .count(),
        2
    );
    // 09:00+01:00 is 08:00 UTC.
    assert_eq!(by(|p| p.since = Some("2026-12-01T08:30:00Z".into())), "");
    assert_eq!(
        by(|p| {
            p.query = Some("fox".into());
            p.since = Some("2026-12-01T07:59:59Z".into());
            p.model = Some("gpt-image-2".into());
        }),
        "20261201-090000-a-green-fox-33333333.png"
    );
    let found = index.find(&query("whale")).unwrap();
    let whale = &found.images[0];
    assert_eq!(whale.uri, format!("imagegen://images/{}", whale.name));
    assert_eq!(
        (
            whale.size.as_str(),
            whale.model.as_deref(),
            whale.has_sidecar
        ),
        ("1024x1024", Some("gpt-image-2"), true)
    );
    assert_eq!(whale.prompt, "A blue whale under a lighthouse");
    assert_eq!(whale.sha256, "ab".repeat(32));
}

#[test]
fn search_syntax_in_the_query_is_only_ever_words() {
    let index = Index::memory("test").unwrap();
    for s in three() {
        index.upsert(&s).unwrap();
    }
    let fox = 2;
    for (typed, expected) in [
        ("\"fox", fox),
        ("fox*", fox),
        ("-fox", fox),
        ("^fox", fox),
        ("fox)", fox),
        ("prompt:fox", 0),
        // One typed word is one phrase: "near fox", which no prompt holds.
        ("NEAR(fox", 0),
        ("red-fox", 1),
        ("NEAR(fox whale)", 0),
        ("fox OR whale", 0),
        ("fox NOT red", 0),
        ("\"quoted\"", 1),
        ("* - \" ( ) : ^ +", 3),
        ("'; DROP TABLE images; --", 0),
        ("\u{301}", 3),
    ] {
        let page = index
            .find(&query(typed))
            .unwrap_or_else(|e| panic!("{typed:?}: {e}"));
        assert_eq!(page.images.len(), expected, "{typed:?}");
    }
    assert_eq!(index.count().unwrap(), 3, "the table is still there");
    // A word the tokenizer reduces to nothing is an empty phrase: no match, no error.
    let empty = FindQuery {
        words: vec!["\u{301}".into(), "fox".into()],
        limit: 10,
        ..FindQuery::default()
    };
    assert!(index.find(&empty).is_ok());
}

#[test]
fn pages_are_complete_and_stable_while_images_arrive() {
    let index = Index::memory("test").unwrap();
    // Five images per second: names break the ties.
    let all: Vec<Sidecar> = (0..47)
        .map(|i| {
            sidecar(
                &format!("img-{i:03}.png"),
                "a cat",
                "m",
                &format!("2026-11-01T00:00:{:02}Z", i / 5),
            )
        })
        .collect();
    for s in &all {
        index.upsert(s).unwrap();
    }
    let mut expected: Vec<&Sidecar> = all.iter().collect();
    expected.sort_by(|a, b| (&b.created, &b.name).cmp(&(&a.created, &a.name)));
    let mut seen = Vec::new();
    let mut params = FindParams {
        query: Some("cat".into()),
        limit: Some(10),
        ..FindParams::default()
    };
    loop {
        let page = index.find(&params.to_query(None).unwrap()).unwrap();
        assert!(page.images.len() <= 10);
        seen.extend(page.images.iter().map(|i| i.name.clone()));
        // A newer image stored meanwhile does not move the later pages.
        index
            .upsert(&sidecar(
                &format!("new-{}.png", seen.len()),
                "a cat",
                "m",
                "2026-11-02T00:00:00Z",
            ))
            .unwrap();
        match page.next_cursor {
            Some(cursor) => params.cursor = Some(cursor),
            None => break,
        }
    }
    let expected: Vec<String> = expected.iter().map(|s| s.name.clone()).collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_rebuild_answers_exactly_as_the_index_kept_by_catch_ups() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    for s in three() {
        store(&images, &s);
    }
    // One image stored before sidecars existed.
    fs::write(
        images.join("20261110-120000-an-old-castle-44444444.png"),
        png(3, 2),
    )
    .unwrap();
    let (index, source) = eager(&dir.path().join("index.sqlite3"), &images);
    let queries = ["fox", "lighthouse", "castle", "", "a"];
    let answers = |index: &Index| -> Vec<FindPage> {
        queries
            .iter()
            .map(|q| index.search(&source, &query(q)).unwrap())
            .collect()
    };
    let kept = answers(&index);
    assert_eq!(kept[3].images.len(), 4);
    let report = index.reindex(&source).unwrap();
    assert_eq!(
        (report.from_sidecars, report.from_files, report.skipped),
        (3, 1, 0)
    );
    assert_eq!(answers(&index), kept);
    // A second index file built by reindex alone agrees too.
    let (other, _) = eager(&dir.path().join("other.sqlite3"), &images);
    other.reindex(&source).unwrap();
    assert_eq!(answers(&other), kept);
}

#[test]
fn images_without_sidecars_are_taken_in_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = png(5, 3);
    let name = "20261110-120000-an-old-castle-at-night-44444444-2.png";
    fs::write(dir.path().join(name), &bytes).unwrap();
    // Not images: left alone.
    fs::write(dir.path().join("notes.txt"), "x").unwrap();
    fs::write(dir.path().join("broken.png"), "not a png").unwrap();
    let source = DirSource::new(dir.path());
    let index = Index::memory(&source.location()).unwrap();
    let report = index.reindex(&source).unwrap();
    assert_eq!((report.from_files, report.skipped), (1, 1));
    let page = index.find(&query("castle night")).unwrap();
    let found = &page.images[0];
    assert_eq!(found.name, name);
    assert_eq!(
        (found.width, found.height, found.bytes),
        (5, 3, bytes.len() as u64)
    );
    assert_eq!(found.sha256, crate::storage::hex(&Sha256::digest(&bytes)));
    assert_eq!((found.prompt.as_str(), found.has_sidecar), ("", false));
    assert!(OffsetDateTime::parse(&found.created, &Rfc3339).is_ok());
    // The hash and the numbers of the name are not words.
    assert!(index.find(&query("44444444")).unwrap().images.is_empty());
    assert!(index.find(&query("20261110")).unwrap().images.is_empty());
}

#[test]
fn another_replicas_images_and_deletions_are_picked_up_by_the_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let [first, second, _] = <[Sidecar; 3]>::try_from(three()).unwrap();
    store(&images, &first);
    let (index, source) = eager(&dir.path().join("index.sqlite3"), &images);
    assert_eq!(
        names(&index.search(&source, &query("fox")).unwrap()),
        [first.name.as_str()]
    );
    // Another replica stores an image, then deletes the first.
    store(&images, &second);
    assert_eq!(
        names(&index.search(&source, &query("whale")).unwrap()),
        [second.name.as_str()]
    );
    fs::remove_file(images.join(&first.name)).unwrap();
    fs::remove_file(images.join(sidecar_name(&first.name))).unwrap();
    assert!(index
        .search(&source, &query("fox"))
        .unwrap()
        .images
        .is_empty());
    assert!(!index.known(&first.name).unwrap());
}

#[test]
fn an_image_indexed_before_its_sidecar_was_complete_is_read_again_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = &three()[0];
    fs::write(dir.path().join(&s.name), png(2, 2)).unwrap();
    // Half-written, as another process may leave it for an instant.
    fs::write(dir.path().join(sidecar_name(&s.name)), "{\"version\":1,").unwrap();
    let (index, source) = eager(&dir.path().join("index.sqlite3"), dir.path());
    let page = index.search(&source, &query("")).unwrap();
    assert!(!page.images[0].has_sidecar);
    store(dir.path(), s);
    let page = index.search(&source, &query("snow")).unwrap();
    assert_eq!(names(&page), [s.name.as_str()]);
    assert!(page.images[0].has_sidecar);
}

/// A store whose listing is counted.
struct Counted {
    inner: DirSource,
    revision: Option<String>,
    lists: AtomicUsize,
}

impl SidecarSource for Counted {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn revision(&self) -> Option<String> {
        self.revision.clone()
    }
    fn list(&self, after: Option<OffsetDateTime>) -> io::Result<Listing> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(after)
    }
    fn sidecar(&self, name: &str) -> io::Result<Sidecar> {
        self.inner.sidecar(name)
    }
    fn probe(&self, name: &str) -> io::Result<Sidecar> {
        self.inner.probe(name)
    }
}

#[test]
fn the_store_is_listed_only_when_it_changed_or_at_most_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), &three()[0]);
    let counted = |revision: Option<&str>| Counted {
        inner: DirSource::new(dir.path()),
        revision: revision.map(str::to_string),
        lists: AtomicUsize::new(0),
    };
    let index = Index::memory("test").unwrap();
    let stamped = counted(Some("r1"));
    for _ in 0..5 {
        assert_eq!(
            index.search(&stamped, &query("fox")).unwrap().images.len(),
            1
        );
    }
    assert_eq!(
        stamped.lists.load(Ordering::SeqCst),
        1,
        "same revision: listed once"
    );
    let changed = counted(Some("r2"));
    index.catch_up(&changed).unwrap();
    assert_eq!(changed.lists.load(Ordering::SeqCst), 1);
    // Without a stamp, once per CATCH_UP_EVERY (a second): these calls take far less.
    let index = Index::memory("test").unwrap();
    let unstamped = counted(None);
    for _ in 0..5 {
        assert_eq!(
            index
                .search(&unstamped, &query("fox"))
                .unwrap()
                .images
                .len(),
            1
        );
    }
    assert_eq!(unstamped.lists.load(Ordering::SeqCst), 1);
}

#[test]
fn a_damaged_index_file_is_set_aside_and_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    for s in three() {
        store(&images, &s);
    }
    let path = dir.path().join("index.sqlite3");
    fs::write(&path, b"this is not a database, it is garbage ".repeat(200)).unwrap();
    let (index, source) = eager(&path, &images);
    assert_eq!(
        index.search(&source, &query("fox")).unwrap().images.len(),
        2
    );
    assert!(dir.path().join("index.sqlite3.damaged").exists());

    // Damaged under a running index: the next search notices, sets the file aside, rebuilds
    // and answers.
    drop(index);
    let (index, source) = eager(&path, &images);
    assert_eq!(
        index.search(&source, &query("whale")).unwrap().images.len(),
        1
    );
    fs::remove_file(dir.path().join("index.sqlite3.damaged")).unwrap();
    // The word index loses its pages: FTS5 reports the table corrupt at the next query.
    index
        .lock()
        .conn
        .execute_batch("DELETE FROM images_fts_data")
        .unwrap();
    let page = index.search(&source, &query("fox")).unwrap();
    assert_eq!(page.images.len(), 2);
    assert!(
        dir.path().join("index.sqlite3.damaged").exists(),
        "noticed and set aside"
    );
}

#[test]
fn an_unwritable_index_place_falls_back_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), &three()[1]);
    // A file where the index's directory should be.
    let blocker = dir.path().join("blocker");
    fs::write(&blocker, "x").unwrap();
    let source = DirSource::new(dir.path());
    let index = Index::open_or_memory(Some(&blocker.join("index.sqlite3")), &source.location())
        .unwrap()
        .with_catch_up_every(Duration::ZERO);
    assert_eq!(index.path(), None);
    assert_eq!(
        index.search(&source, &query("whale")).unwrap().images.len(),
        1
    );
}

#[test]
fn an_index_file_of_another_store_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite3");
    let first = Index::open(&path, "/srv/a").unwrap();
    first.upsert(&three()[0]).unwrap();
    drop(first);
    assert_eq!(Index::open(&path, "/srv/a").unwrap().count().unwrap(), 1);
    assert_eq!(Index::open(&path, "/srv/b").unwrap().count().unwrap(), 0);
    assert_ne!(
        default_path(dir.path(), "/srv/a"),
        default_path(dir.path(), "/srv/b")
    );
    assert!(default_path(dir.path(), "/srv/a").starts_with(dir.path().join("imagegen-mcp/index")));
}

#[test]
fn a_caller_sees_only_their_own_images_unless_none_is_named() {
    let index = Index::memory("test").unwrap();
    for (i, caller) in [Some("alice"), Some("bob"), None].into_iter().enumerate() {
        let mut s = sidecar(&format!("x-{i}.png"), "a cat", "m", "2026-11-01T00:00:00Z");
        s.caller = caller.map(str::to_string);
        index.upsert(&s).unwrap();
    }
    let seen = |caller: Option<&str>| {
        let q = FindParams::default()
            .to_query(caller.map(str::to_string))
            .unwrap();
        names(&index.find(&q).unwrap()).join(" ")
    };
    assert_eq!(seen(Some("alice")), "x-0.png");
    assert_eq!(seen(Some("carol")), "");
    assert_eq!(seen(None), "x-2.png x-1.png x-0.png");
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    for (params, param, says) in [
        (
            FindParams {
                since: Some("last tuesday".into()),
                ..FindParams::default()
            },
            "since",
            "YYYY-MM-DD",
        ),
        (
            FindParams {
                until: Some("2026-13-01".into()),
                ..FindParams::default()
            },
            "until",
            "not a date",
        ),
        (
            FindParams {
                since: Some("2026-12-02".into()),
                until: Some("2026-12-01".into()),
                ..FindParams::default()
            },
            "since",
            "later than",
        ),
        (
            FindParams {
                cursor: Some("c2.garbage!!".into()),
                ..FindParams::default()
            },
            "cursor",
            "next_cursor",
        ),
        (
            FindParams {
                cursor: Some(format!(
                    "c2.{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("5; DROP TABLE images")
                )),
                ..FindParams::default()
            },
            "cursor",
            "not a cursor",
        ),
        (
            FindParams {
                limit: Some(0),
                ..FindParams::default()
            },
            "limit",
            "1 to 100",
        ),
        (
            FindParams {
                limit: Some(101),
                ..FindParams::default()
            },
            "limit",
            "1 to 100",
        ),
        (
            FindParams {
                query: Some("word ".repeat(40)),
                ..FindParams::default()
            },
            "query",
            "words",
        ),
        (
            FindParams {
                query: Some("x".repeat(5000)),
                ..FindParams::default()
            },
            "query",
            "longer",
        ),
        (
            FindParams {
                model: Some("m".repeat(5000)),
                ..FindParams::default()
            },
            "model",
            "longer",
        ),
    ] {
        let err = params.to_query(None).unwrap_err();
        assert_eq!(err.param.as_deref(), Some(param), "{params:?}");
        assert!(err.message.contains(says), "{}", err.message);
        assert!(err.message.len() < 400, "bounded: {}", err.message);
        assert_eq!(err.kind.as_str(), "invalid_request");
    }
    let q = FindParams {
        since: Some(" 2026-12-01 ".into()),
        until: Some("9999-12-31".into()),
        ..FindParams::default()
    }
    .to_query(None)
    .unwrap();
    assert_eq!(q.limit, DEFAULT_LIMIT);
    assert_eq!(q.since.unwrap().unix_timestamp(), 1_796_083_200);
    let cursor = Cursor { id: -5 };
    assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
}

#[test]
fn name_words_are_the_slug_of_a_store_name() {
    for (name, words) in [
        ("20261201-101500-a-red-fox-1a2b3c4d.png", "a red fox"),
        ("20261201-101500-a-red-fox-1a2b3c4d-3.webp", "a red fox"),
        ("20261201-101500-image-1a2b3c4d.png", "image"),
        ("holiday-photo.jpg", "holiday photo"),
        ("x.png", "x"),
    ] {
        assert_eq!(name_words(name), words, "{name}");
    }
}
