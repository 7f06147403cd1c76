//! GPT Image 2.6's parameters and formats through the real binary: checked against the
//! catalog before anything is sent, sent only to models that take them, and GIF and SVG
//! results stored, previewed and read back as they are.

use crate::common::*;
use rmcp::model::{
    CallToolRequestParams, ProtocolVersion, ReadResourceRequestParams, ResourceContents,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

fn config(home: &std::path::Path, toml: &str) -> String {
    let file = home.join("imagegen.toml");
    std::fs::write(&file, toml).unwrap();
    file.to_str().unwrap().to_string()
}

async fn call(server: &Server, tool: &str, arguments: Value) -> rmcp::model::CallToolResult {
    server
        .client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments)))
        .await
        .unwrap()
}

#[tokio::test]
async fn parameters_a_model_does_not_take_are_refused_before_anything_is_sent() {
    let upstream = MockServer::start().await;
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"48\"><rect width=\"64\" height=\"48\" fill=\"#08f\"/></svg>";
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"created": 1, "data": [{"b64_json": b64(svg)}]})),
        )
        .mount(&upstream)
        .await;
    let home = tempfile::tempdir().unwrap();
    let png = png(64, 64).await;
    let image = format!("data:image/png;base64,{}", b64(&png));
    let mut opaque = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64))
        .write_to(&mut opaque, image::ImageFormat::Png)
        .unwrap();
    let no_alpha = format!("data:image/png;base64,{}", b64(opaque.get_ref()));
    let file = config(
        home.path(),
        &format!(
            "default_provider = \"openai\"\n[catalog]\ncheck_upstream = false\n[providers.openai]\nbase_url = \"{}/v1\"\napi_key = \"{SENTINEL_KEY}\"\n[providers.writer]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nsvg_model = \"gpt-5.2\"\n",
            upstream.uri(),
            upstream.uri()
        ),
    );
    let server = Server::start_with(
        home.path(),
        &["--config", &file],
        &[],
        ProtocolVersion::V_2025_11_25,
    )
    .await;
    let refusals = [
        (
            "generate_image",
            json!({"prompt": "x", "model": "gpt-image-2.5-flare", "complexity": "low"}),
            "complexity",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "complexity": "extreme"}),
            "complexity",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "frame_count": 4}),
            "frame_count",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "gif", "frame_count": 17}),
            "frame_count",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "gif", "frame_duration_ms": 5}),
            "frame_duration_ms",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "gif", "partial_images": 1}),
            "partial_images",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "gif", "size": "1024x1024", "frame_count": 9}),
            "size",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "gif", "model": "gpt-image-2"}),
            "output_format",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "svg"}),
            "svg.model",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "output_format": "svg", "n": 2, "svg": {"model": "gpt-5.2"}}),
            "n",
        ),
        (
            "generate_image",
            json!({"prompt": "x", "svg": {"model": "gpt-5.2"}}),
            "svg",
        ),
        (
            "edit_image",
            json!({"prompt": "x", "images": [image], "markup": image, "model": "gpt-image-2"}),
            "markup",
        ),
        (
            "edit_image",
            json!({"prompt": "x", "images": [image], "markup": no_alpha}),
            "markup",
        ),
        (
            "edit_image",
            json!({"prompt": "x", "images": [image], "mask": image, "output_format": "gif"}),
            "mask",
        ),
    ];
    for (tool, arguments, param) in refusals {
        let result = call(&server, tool, arguments.clone()).await;
        assert_eq!(result.is_error, Some(true), "{arguments}");
        let error = &result.structured_content.clone().unwrap()["error"];
        assert_eq!(
            (error["kind"].as_str(), error["param"].as_str()),
            (Some("invalid_request"), Some(param)),
            "{arguments}: {error}"
        );
    }
    assert!(
        upstream.received_requests().await.unwrap().is_empty(),
        "nothing was sent"
    );

    // With the provider's svg_model, an SVG call needs no svg.model, and the writer is sent nested.
    let result = call(&server, "generate_image", json!({"prompt": "a logo", "provider": "writer", "output_format": "svg", "svg": {"reasoning": {"effort": "high"}}})).await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let sent: Value =
        serde_json::from_slice(&upstream.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        sent["svg"],
        json!({"model": "gpt-5.2", "reasoning": {"effort": "high"}}),
        "{sent}"
    );
    assert_eq!(
        (sent["output_format"].as_str(), sent["model"].as_str()),
        (Some("svg"), Some("gpt-image-2.6-flare"))
    );
    let stored = &result.structured_content.clone().unwrap()["images"][0];
    assert_eq!(
        (
            stored["mime"].as_str(),
            stored["width"].as_u64(),
            stored["height"].as_u64()
        ),
        (Some("image/svg+xml"), Some(64), Some(48)),
        "{stored}"
    );
    assert!(stored["path"].as_str().unwrap().ends_with(".svg"));
    let read = server
        .client
        .read_resource(ReadResourceRequestParams::new(
            stored["uri"].as_str().unwrap(),
        ))
        .await
        .unwrap();
    match &read.contents[0] {
        ResourceContents::BlobResourceContents {
            blob, mime_type, ..
        } => {
            assert_eq!(unb64(blob), svg.to_vec(), "read back as saved");
            assert_eq!(mime_type.as_deref(), Some("image/svg+xml"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!server.stop().await.contains(SENTINEL_KEY));
}

#[tokio::test]
async fn the_mock_makes_gifs_and_svgs_that_are_stored_previewed_and_read_back() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &[], ProtocolVersion::V_2025_11_25).await;
    let result = call(&server, "generate_image", json!({"prompt": "a spinning top", "output_format": "gif", "frame_count": 4, "frame_duration_ms": 100, "size": "128x128"})).await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let s = result.structured_content.clone().unwrap();
    let stored = &s["images"][0];
    assert_eq!(
        (stored["mime"].as_str(), stored["frames"].as_u64()),
        (Some("image/gif"), Some(4)),
        "{stored}"
    );
    let saved = std::fs::read(stored["path"].as_str().unwrap()).unwrap();
    assert!(saved.starts_with(b"GIF8"));
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert!(text.contains("animated, 4 frames"), "{text}");
    let preview = result
        .content
        .iter()
        .find_map(|c| c.as_image().cloned())
        .expect("an inline preview");
    assert!(
        matches!(
            preview.mime_type.as_str(),
            "image/gif" | "image/jpeg" | "image/png"
        ),
        "{}",
        preview.mime_type
    );
    let read = server
        .client
        .read_resource(ReadResourceRequestParams::new(
            stored["uri"].as_str().unwrap(),
        ))
        .await
        .unwrap();
    match &read.contents[0] {
        ResourceContents::BlobResourceContents { blob, .. } => assert_eq!(unb64(blob), saved),
        other => panic!("{other:?}"),
    }

    let result = call(
        &server,
        "generate_image",
        json!({"prompt": "a logo", "output_format": "svg", "size": "300x200"}),
    )
    .await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let stored = result.structured_content.clone().unwrap()["images"][0].clone();
    assert_eq!(
        (
            stored["mime"].as_str(),
            stored["width"].as_u64(),
            stored["height"].as_u64()
        ),
        (Some("image/svg+xml"), Some(300), Some(200)),
        "{stored}"
    );
    let preview = result
        .content
        .iter()
        .find_map(|c| c.as_image().cloned())
        .expect("a raster preview");
    assert_ne!(
        preview.mime_type, "image/svg+xml",
        "SVGs are previewed as raster images"
    );
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert!(text.to_lowercase().contains("vector"), "{text}");
    server.stop().await;
}
