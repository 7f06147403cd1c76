//! History index benchmark: `cargo bench --bench index`.
//!
//! Writes a store of 100,000 sidecars (and their images, empty: a sidecar is never read past)
//! into a temporary directory, times `images reindex` over it, then times what one
//! `find_images` call does in the server — the parameters read, the catch-up check against
//! the store, the query — for a mix of queries, and the catch-up after another replica
//! stored an image. Prints a table and writes the figures to `target/bench-index.json`. See
//! `docs/benchmarks.md`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use imagegen_mcp::storage::{
    index::{DirSource, FindParams, Index, SidecarSource as _},
    sidecar::{sidecar_name, Sidecar, SIDECAR_VERSION},
};
use serde_json::{json, Value};

/// Images in the store.
const IMAGES: usize = 100_000;
/// Distinct words the prompts are drawn from.
const VOCABULARY: usize = 2_000;
/// Timed queries of each kind.
const RUNS: usize = 200;
/// The `find_images` p50 target.
const TARGET_P50_MS: f64 = 10.0;

/// A small deterministic generator (xorshift64*): the same store on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A word rank drawn so that rank r is about 1/r as frequent as the first (Zipf).
    fn zipf(&mut self) -> usize {
        ((VOCABULARY as f64).powf(self.unit()) as usize).saturating_sub(1)
    }
}

/// The word of rank `i`: made-up, distinct, pronounceable.
fn word(i: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ra", "ten", "sol", "vu", "ne", "pi", "dor", "fa", "gri", "ho", "ju",
        "bel", "zan",
    ];
    format!(
        "{}{}{}",
        SYLLABLES[i % 16],
        SYLLABLES[(i / 16) % 16],
        SYLLABLES[(i / 256) % 16]
    )
}

const MODELS: [&str; 4] = [
    "gpt-image-1",
    "gpt-image-1.5",
    "gpt-image-2",
    "mock-image-1",
];

/// Writes the store: `IMAGES` sidecars over the year before 2026-12-01, with empty images.
fn write_store(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let end = time::macros::datetime!(2026-12-01 0:00 UTC);
    for i in 0..IMAGES {
        let words: Vec<String> = (0..8 + rng.below(13)).map(|_| word(rng.zipf())).collect();
        let created = end - time::Duration::seconds((rng.below(365 * 86_400)) as i64);
        let name = format!(
            "{}-{}-{:08x}.png",
            created
                .format(time::macros::format_description!(
                    "[year][month][day]-[hour][minute][second]"
                ))
                .unwrap(),
            words[..3].join("-"),
            i
        );
        let model = MODELS[rng.below(MODELS.len())];
        let mut params = serde_json::Map::new();
        params.insert("size".into(), json!("1024x1024"));
        params.insert("quality".into(), json!("high"));
        let sidecar = Sidecar {
            version: SIDECAR_VERSION,
            name: name.clone(),
            mime: "image/png".into(),
            bytes: 1_500_000,
            sha256: format!("{:064x}", i),
            upstream_sha256: None,
            width: 1024,
            height: 1024,
            frames: None,
            created: imagegen_mcp::clock::rfc3339(created),
            caller: Some(format!("caller-{}", rng.below(10))),
            tool: Some("generate_image".into()),
            prompt: words.join(" "),
            prompt_sent: None,
            preset: None,
            revised_prompt: (rng.below(4) == 0).then(|| format!("{} in detail", words.join(" "))),
            provider: Some(
                if model.starts_with("mock") {
                    "mock"
                } else {
                    "openai"
                }
                .into(),
            ),
            model: Some(model.into()),
            params,
            usage: None,
            request_id: Some(format!("req_{i:x}")),
            inputs: Vec::new(),
            notes: Vec::new(),
            filename_requested: None,
        };
        fs::write(dir.join(&name), b"").unwrap();
        fs::write(
            dir.join(sidecar_name(&name)),
            serde_json::to_vec(&sidecar).unwrap(),
        )
        .unwrap();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What one kind of query asks, drawn afresh for each run.
type Kind = (&'static str, fn(&mut Rng) -> FindParams);

fn kinds() -> Vec<Kind> {
    fn with_query(query: String) -> FindParams {
        FindParams {
            query: Some(query),
            ..FindParams::default()
        }
    }
    vec![
        ("newest page, no filter", |_| FindParams::default()),
        ("one common word (rank 1-10)", |r| {
            with_query(word(r.below(10)))
        }),
        ("one mid word (rank 100-500)", |r| {
            with_query(word(100 + r.below(400)))
        }),
        ("one rare word (rank 1500-2000)", |r| {
            with_query(word(1500 + r.below(500)))
        }),
        ("two words (common + mid)", |r| {
            with_query(format!(
                "{} {}",
                word(r.below(10)),
                word(100 + r.below(400))
            ))
        }),
        ("model only", |r| FindParams {
            model: Some(MODELS[r.below(MODELS.len())].into()),
            ..FindParams::default()
        }),
        ("a week + a common word", |r| {
            let day = 1 + r.below(20);
            FindParams {
                query: Some(word(r.below(10))),
                since: Some(format!("2026-11-{day:02}")),
                until: Some(format!("2026-11-{:02}", day + 6)),
                ..FindParams::default()
            }
        }),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scratch = target_dir().join("tmp");
    fs::create_dir_all(&scratch).unwrap();
    let tmp = tempfile::tempdir_in(&scratch).unwrap();
    let store = tmp.path().join("images");
    let started = Instant::now();
    write_store(&store);
    eprintln!(
        "wrote {IMAGES} sidecars in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let source = DirSource::new(&store);
    let index_path = tmp.path().join("index.sqlite3");
    // Listed whenever the directory's stamp changed (a settled stamp keeps the query phase
    // from listing at all), so the catch-up below runs at the first search after the change.
    let index = Index::open(&index_path, &source.location())
        .unwrap()
        .with_catch_up_every(Duration::ZERO);
    let report = index.reindex(&source).unwrap();
    assert_eq!(report.from_sidecars, IMAGES);
    let index_mb = fs::metadata(&index_path).map_or(0, |m| m.len()) as f64 / 1e6;
    eprintln!("reindex: {} ms, index {index_mb:.1} MB", report.elapsed_ms);
    // Until the directory's change is old enough to trust its stamp, every search lists it.
    while source.revision().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    index
        .search(&source, &FindParams::default().to_query(None).unwrap())
        .unwrap();

    let mut rows = Vec::new();
    let mut all = Vec::new();
    let mut rng = Rng(42);
    for (label, make) in kinds() {
        let mut samples = Vec::with_capacity(RUNS);
        let mut found = 0;
        for _ in 0..RUNS {
            let params = make(&mut rng);
            let t = Instant::now();
            let query = params.to_query(None).unwrap();
            let page = index.search(&source, &query).unwrap();
            samples.push(ms(t.elapsed()));
            found += page.images.len();
        }
        samples.sort_by(f64::total_cmp);
        all.extend_from_slice(&samples);
        rows.push(json!({"query": label, "p50_ms": pct(&samples, 0.5),
            "p95_ms": pct(&samples, 0.95), "max_ms": pct(&samples, 1.0),
            "mean_results": found as f64 / RUNS as f64}));
    }
    // The next page of a common word.
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let mut params = FindParams {
            query: Some(word(i % 10)),
            ..FindParams::default()
        };
        params.cursor = index
            .find(&params.to_query(None).unwrap())
            .unwrap()
            .next_cursor;
        let t = Instant::now();
        let page = index
            .search(&source, &params.to_query(None).unwrap())
            .unwrap();
        samples.push(ms(t.elapsed()));
        assert!(!page.images.is_empty());
    }
    samples.sort_by(f64::total_cmp);
    all.extend_from_slice(&samples);
    rows.push(
        json!({"query": "second page of a common word", "p50_ms": pct(&samples, 0.5),
        "p95_ms": pct(&samples, 0.95), "max_ms": pct(&samples, 1.0), "mean_results": 20.0}),
    );
    all.sort_by(f64::total_cmp);

    // Another replica stores an image: the next search lists the store and takes it in.
    let extra = "20261201-120000-kalolo-extra-ffffffff.png";
    let mut sidecar: Sidecar = serde_json::from_slice(
        &fs::read(
            store.join(sidecar_name(
                &fs::read_dir(&store)
                    .unwrap()
                    .find_map(|e| {
                        let name = e.unwrap().file_name().into_string().unwrap();
                        name.strip_suffix(".json").map(str::to_string)
                    })
                    .unwrap(),
            )),
        )
        .unwrap(),
    )
    .unwrap();
    sidecar.name = extra.into();
    sidecar.prompt = "zzextraword".into();
    fs::write(store.join(extra), b"").unwrap();
    fs::write(
        store.join(sidecar_name(extra)),
        serde_json::to_vec(&sidecar).unwrap(),
    )
    .unwrap();
    let query = FindParams {
        query: Some("zzextraword".into()),
        ..FindParams::default()
    }
    .to_query(None)
    .unwrap();
    let t = Instant::now();
    let page = index.search(&source, &query).unwrap();
    let catch_up_ms = ms(t.elapsed());
    assert_eq!(page.images.len(), 1, "the other replica's image is found");

    let p50 = pct(&all, 0.5);
    println!(
        "\nhistory index over {IMAGES} images ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "reindex: {:.2} s for {IMAGES} sidecars; index file {index_mb:.1} MB",
        report.elapsed_ms as f64 / 1000.0
    );
    println!("catch-up after another replica stored one image: {catch_up_ms:.1} ms");
    println!(
        "{:34} {:>9} {:>9} {:>9} {:>8}",
        "find_images query", "p50 ms", "p95 ms", "max ms", "results"
    );
    for row in &rows {
        println!(
            "{:34} {:>9.3} {:>9.3} {:>9.3} {:>8.1}",
            row["query"].as_str().unwrap(),
            row["p50_ms"].as_f64().unwrap(),
            row["p95_ms"].as_f64().unwrap(),
            row["max_ms"].as_f64().unwrap(),
            row["mean_results"].as_f64().unwrap()
        );
    }
    let verdict = if p50 <= TARGET_P50_MS { "PASS" } else { "MISS" };
    println!(
        "all queries: p50 {p50:.3} ms, p95 {:.3} ms (target p50 < {TARGET_P50_MS} ms: {verdict})",
        pct(&all, 0.95)
    );
    let out: Value = json!({
        "images": IMAGES, "reindex_ms": report.elapsed_ms, "index_mb": index_mb,
        "catch_up_ms": catch_up_ms, "p50_ms": p50, "p95_ms": pct(&all, 0.95), "queries": rows,
        "loadavg": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let path = target_dir().join("bench-index.json");
    fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    eprintln!("wrote {}", path.display());
}

/// The cargo target directory (where the figures go).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}
