//! `generate_images`, `edit_image` and `create_variation` through the real binary and rmcp's
//! client, on mock providers (offline, deterministic).

use std::{path::Path, time::Instant};

use crate::common::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ProtocolVersion,
    ReadResourceRequestParams, ResourceContents,
};
use serde_json::{json, Value};

fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structuredContent")
}

/// Starts the server with `toml` as its config file, images under `home/out`.
async fn start(home: &Path, toml: &str) -> Server {
    let file = home.join("imagegen.toml");
    std::fs::write(
        &file,
        format!("default_provider = \"mock\"\n[output]\ndir = \"out\"\n{toml}"),
    )
    .unwrap();
    let config = file.display().to_string();
    Server::start(
        home,
        &[("IMAGEGEN_CONFIG", config.as_str())],
        ProtocolVersion::V_2025_11_25,
    )
    .await
}

async fn call(server: &Server, tool: &'static str, arguments: Value) -> CallToolResult {
    server
        .client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args(arguments)))
        .await
        .expect("tool call")
}

fn saved_files(dir: &Path) -> Vec<String> {
    // The images, not their sidecars (`NAME.json`) nor the usage ledger (`usage/`).
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn results_keep_input_order_with_mixed_latencies_and_one_failure_hides_nothing() {
    let home = tempfile::tempdir().unwrap();
    let server = start(
        home.path(),
        "[providers.slow]\nkind = \"mock\"\nlatency_ms = 600\n\
         [providers.refuses]\nkind = \"mock\"\nfail_rate = 1.0\nfail_with = \"content_policy\"\n",
    )
    .await;
    let started = Instant::now();
    let result = call(
        &server,
        "generate_images",
        json!({
            "items": [
                {"prompt": "first, slow", "provider": "slow"},
                {"prompt": "second, fast"},
                {"prompt": "third, refused", "provider": "refuses"},
                {"prompt": "fourth, slow", "provider": "slow", "size": "512x512"},
                {"prompt": "fifth, fast", "n": 2},
            ],
            "size": "256x256",
            "delivery": "link",
        }),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let out = structured(&result);
    let results = out["results"].as_array().unwrap();
    let prompts: Vec<&str> = results
        .iter()
        .map(|r| r["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(
        prompts,
        [
            "first, slow",
            "second, fast",
            "third, refused",
            "fourth, slow",
            "fifth, fast"
        ]
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[2]["error"]["kind"], "content_policy");
    assert!(results[2]["images"].as_array().unwrap().is_empty());
    assert_eq!(results[0]["images"][0]["width"], 256);
    assert_eq!(
        results[3]["images"][0]["width"], 512,
        "per-item overrides win"
    );
    assert_eq!(
        results[4]["images"].as_array().unwrap().len(),
        2,
        "n per item"
    );
    let summary = &out["summary"];
    assert_eq!(
        (
            &summary["requested"],
            &summary["succeeded"],
            &summary["failed"]
        ),
        (&json!(5), &json!(4), &json!(1))
    );
    // Two slow items of 600 ms each ran side by side.
    assert!(
        elapsed.as_millis() < 1150,
        "items run concurrently: {elapsed:?}"
    );
    assert_eq!(saved_files(&home.path().join("out")).len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn the_in_flight_limit_bounds_a_batch() {
    let home = tempfile::tempdir().unwrap();
    let server = start(
        home.path(),
        "[limits]\nmax_in_flight = 2\n[providers.mock]\nlatency_ms = 300\n",
    )
    .await;
    let started = Instant::now();
    let batch = call(
        &server,
        "generate_images",
        json!({"prompt": "a lantern", "count": 6, "seed": 1, "size": "64x64", "delivery": "link"}),
    );
    let watch = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let read = server
            .client
            .read_resource(ReadResourceRequestParams::new("imagegen://status"))
            .await
            .unwrap();
        let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
            panic!("the status is text");
        };
        serde_json::from_str::<Value>(text).unwrap()
    };
    let (result, status) = tokio::join!(batch, watch);
    let elapsed = started.elapsed();
    assert_eq!(
        (&status["in_flight"], &status["max_in_flight"]),
        (&json!(2), &json!(2)),
        "the status shows the slots in use: {status}"
    );
    let out = structured(&result);
    assert_eq!(out["summary"]["succeeded"], 6, "{out}");
    // With a seed each image is its own request: six 300 ms calls, two at a time, take three
    // rounds; unbounded they would take one.
    assert!(elapsed.as_millis() >= 900, "{elapsed:?}");
    let hashes: std::collections::BTreeSet<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["images"][0]["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), 6, "seed + k gives six different images");
    server.stop().await;
}

#[tokio::test]
async fn previews_of_sixteen_large_images_share_one_budget() {
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), "").await;
    let result = call(
        &server,
        "generate_images",
        json!({"prompt": "a wide valley", "count": 16, "size": "1536x1024"}),
    )
    .await;
    let out = structured(&result);
    assert_eq!(out["summary"]["succeeded"], 16, "{out}");
    let mut inline_bytes = 0;
    let mut links = 0;
    for content in &result.content {
        match content {
            ContentBlock::Image(image) => inline_bytes += image.data.len(),
            ContentBlock::ResourceLink(_) => links += 1,
            _ => {}
        }
    }
    assert_eq!(links, 16, "every image keeps its link");
    assert!(inline_bytes > 0, "some previews are inline");
    assert!(inline_bytes <= 80_000, "{inline_bytes} base64 bytes inline");
    server.stop().await;
}

#[tokio::test]
async fn batch_shape_errors_are_structured() {
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), "[batch]\nmax_items = 3\n").await;
    for (arguments, param) in [
        (json!({"prompts": ["a", "b", "c", "d"]}), "prompts"),
        (
            json!({"prompts": ["a"], "prompt": "b", "count": 2}),
            "prompts",
        ),
        (json!({"prompt": "a"}), "count"),
        (json!({"prompt": "a", "count": 2, "n": 3}), "n"),
    ] {
        let result = call(&server, "generate_images", arguments.clone()).await;
        assert_eq!(result.is_error, Some(true), "{arguments}");
        let error = &structured(&result)["error"];
        assert_eq!(error["kind"], "invalid_request", "{arguments}: {error}");
        assert_eq!(error["param"], param, "{arguments}: {error}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_image_made_by_one_call_is_edited_by_its_uri_with_a_mask() {
    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), "").await;
    let made = call(
        &server,
        "generate_image",
        json!({"prompt": "a street with a car", "size": "256x256", "delivery": "link"}),
    )
    .await;
    let uri = structured(&made)["images"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();

    // Transparent left half: only that half may change.
    let mask = {
        let mut img = image::RgbaImage::from_pixel(256, 256, image::Rgba([0, 0, 0, 255]));
        for (x, _, p) in img.enumerate_pixels_mut() {
            if x < 128 {
                p.0[3] = 0;
            }
        }
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        b64(&out.into_inner())
    };
    let edited = call(
        &server,
        "edit_image",
        json!({"prompt": "remove the car", "images": [uri], "mask": mask, "delivery": "link"}),
    )
    .await;
    assert_eq!(edited.is_error, Some(false), "{edited:?}");
    let out = structured(&edited);
    let before = image::open(structured(&made)["images"][0]["path"].as_str().unwrap())
        .unwrap()
        .to_rgba8();
    let after = image::open(out["images"][0]["path"].as_str().unwrap())
        .unwrap()
        .to_rgba8();
    assert_eq!(after.dimensions(), (256, 256));
    let right_same = (128..256).all(|x| (0..256).all(|y| before[(x, y)] == after[(x, y)]));
    let left_changed = (0..128).any(|x| (0..256).any(|y| before[(x, y)] != after[(x, y)]));
    assert!(right_same, "pixels under the opaque mask are kept");
    assert!(left_changed, "pixels under the transparent mask change");

    // The edit is itself editable: a relative path inside the output directory works too.
    let name = out["images"][0]["name"].as_str().unwrap();
    let again = call(
        &server,
        "edit_image",
        json!({"prompt": "at night", "images": [name], "delivery": "link"}),
    )
    .await;
    assert_eq!(again.is_error, Some(false), "{again:?}");
    server.stop().await;
}

#[tokio::test]
async fn inputs_outside_the_allowed_directories_and_non_images_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let outside = home.path().join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("private.png"), png(32, 32).await).unwrap();
    std::os::unix::fs::symlink(outside.join("private.png"), out.join("link.png")).unwrap();
    std::fs::write(out.join("fake.png"), b"GIF89a not what it claims").unwrap();
    let server = start(home.path(), "").await;

    let private = outside.join("private.png").display().to_string();
    for spec in [
        "../outside/private.png",
        "link.png",
        private.as_str(),
        "/etc/passwd",
    ] {
        let result = call(
            &server,
            "edit_image",
            json!({"prompt": "x", "images": [spec]}),
        )
        .await;
        assert_eq!(result.is_error, Some(true), "{spec}");
        let error = &structured(&result)["error"];
        assert_eq!(error["kind"], "permission", "{spec}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("allowed_dirs"),
            "{error}"
        );
    }
    for spec in ["fake.png", "bm90IGFuIGltYWdlIGF0IGFsbA=="] {
        let result = call(
            &server,
            "edit_image",
            json!({"prompt": "x", "images": [spec]}),
        )
        .await;
        let error = &structured(&result)["error"];
        assert_eq!(error["kind"], "invalid_request", "{spec}: {error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("not a PNG, JPEG or WebP"),
            "{error}"
        );
    }
    assert_eq!(
        saved_files(&out),
        ["fake.png", "link.png"],
        "nothing was made"
    );
    server.stop().await;
}

#[tokio::test]
async fn variations_work_where_the_catalog_allows_and_name_the_models_elsewhere() {
    let home = tempfile::tempdir().unwrap();
    let server = start(
        home.path(),
        "[providers.openai]\napi_key = \"sk-unused-0000\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    )
    .await;
    let made = call(
        &server,
        "generate_image",
        json!({"prompt": "a teapot", "size": "256x256", "delivery": "link"}),
    )
    .await;
    let uri = structured(&made)["images"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let varied = call(
        &server,
        "create_variation",
        json!({"image": uri, "n": 2, "delivery": "link"}),
    )
    .await;
    assert_eq!(varied.is_error, Some(false), "{varied:?}");
    assert_eq!(structured(&varied)["images"].as_array().unwrap().len(), 2);

    let refused = call(
        &server,
        "create_variation",
        json!({"image": uri, "provider": "openai", "model": "gpt-image-1.5"}),
    )
    .await;
    let error = &structured(&refused)["error"];
    assert_eq!(error["kind"], "unsupported", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("dall-e-2") && message.contains("mock-image-1 (provider `mock`)"),
        "{message}"
    );
    server.stop().await;
}
