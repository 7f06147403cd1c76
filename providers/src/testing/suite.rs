//! The happy-path checks every provider must pass: its model list and capabilities agree,
//! and each operation it offers returns the images asked for, read from their bytes.

use std::io::Cursor;

use crate::{
    image_info::probe,
    validate::{check, check_edit, check_edit_images, parse_size},
    EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult, ImageFormat, ImageProvider,
    ImageProviderExt, InputImage, Param, ProviderEvent, SvgOptions, VariationRequest,
};

/// Checks what every provider must do, and returns how many `generate` calls it made.
pub async fn conformance(provider: &dyn ImageProvider) -> usize {
    let kind = provider.kind();
    assert!(
        !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{kind}"
    );
    let model = provider.default_model().to_string();
    assert!(!model.is_empty());
    let models = provider.models();
    assert!(
        models.contains(&model),
        "{kind}: default model {model} not in {models:?}"
    );
    for m in &models {
        let caps = provider.capabilities(m);
        assert!(caps.max_n >= 1 && caps.max_prompt_chars > 0, "{kind}: {m}");
        assert!(!caps.formats.is_empty(), "{kind}: {m}");
    }
    assert!(!provider.capabilities("no-such-model-xyz").known, "{kind}");

    let caps = provider.capabilities(&model);
    assert!(caps.known, "{kind}: {model}");
    assert!(caps.max_n >= 2, "{kind}: {model} should allow n = 2");
    let size = caps.sizes.iter().find(|s| parse_size(s).is_some()).cloned();
    let (width, height) = size.as_deref().and_then(parse_size).unwrap_or((1024, 1024));

    let mut calls = 0;
    let mut generate = |request: GenerateRequest| {
        check(&request, &caps)
            .unwrap_or_else(|e| panic!("{kind}: the suite's request is invalid: {e}"));
        calls += 1;
        async move {
            provider
                .generate(&request)
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
        }
    };

    let mut one = GenerateRequest::new("conformance: a red circle on white", &model);
    one.options.size = size.clone();
    let result = generate(one.clone()).await;
    assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Png);

    let mut two = one.clone();
    two.options.n = Some(2);
    let result = generate(two).await;
    assert_images(kind, &result, &model, 2, (width, height), ImageFormat::Png);

    if caps.takes(Param::OutputFormat) {
        for format in caps
            .formats
            .iter()
            .copied()
            .filter(|f| *f != ImageFormat::Png && f.is_raster())
        {
            let mut req = one.clone();
            req.options.output_format = Some(format);
            let result = generate(req).await;
            assert_images(kind, &result, &model, 1, (width, height), format);
        }
    }

    // An animation: a small frame, as GIF frame caps require, and more than one frame.
    if caps.formats.contains(&ImageFormat::Gif) && caps.gif.is_some() {
        let mut req = one.clone();
        req.options.size = Some(format!("{GIF_SIDE}x{GIF_SIDE}"));
        req.options.output_format = Some(ImageFormat::Gif);
        req.options.frame_count = Some(3);
        let result = generate(req).await;
        assert_images(
            kind,
            &result,
            &model,
            1,
            (GIF_SIDE, GIF_SIDE),
            ImageFormat::Gif,
        );
    }

    // Vector markup, written by the text model `svg.model` names.
    if caps.formats.contains(&ImageFormat::Svg) {
        let mut req = one.clone();
        req.options.output_format = Some(ImageFormat::Svg);
        req.options.svg = Some(SvgOptions {
            model: Some("gpt-5.2".into()),
            reasoning: None,
        });
        let result = generate(req).await;
        assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Svg);
    }

    if caps.takes(Param::Stream) {
        let mut req = one.clone();
        req.options.partial_images = Some(2);
        check(&req, &caps).unwrap_or_else(|e| panic!("{kind}: {e}"));
        calls += 1;
        let (events, mut rx) = Events::channel();
        let result = provider
            .generate_with_events(&req, &events)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Png);
        drop(events);
        let mut partials = Vec::new();
        while let Some(event) = rx.recv().await {
            if let ProviderEvent::PartialImage { index, image } = event {
                image::load_from_memory(&image.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
                partials.push(index);
            }
        }
        assert_eq!(partials, [0, 1], "{kind}: partial images in order");
    }

    // Edits and variations start from an image the provider made itself.
    let source = InputImage::new(
        result.images[0].bytes.clone(),
        ImageFormat::Png,
        "image-1.png",
    );
    if caps.edit {
        calls += edits(provider, &caps, &one, source.clone()).await;
    }
    let variation = VariationRequest::new(&model, source);
    match provider.variation(&variation).await {
        Ok(result) if caps.variations => {
            calls += 1;
            assert_images(kind, &result, &model, 1, (width, height), ImageFormat::Png);
        }
        Ok(_) => panic!("{kind}: {model} made a variation though it cannot"),
        Err(e) => {
            assert!(!caps.variations, "{kind}: {e}");
            assert_eq!(e.kind, ErrorKind::Unsupported, "{kind}: {e}");
            assert!(!e.retryable, "{kind}");
        }
    }
    calls
}

/// Edits of `source` as `like` asks: one and two images, other formats, a mask, partial images.
async fn edits(
    provider: &dyn ImageProvider,
    caps: &crate::ModelCapabilities,
    like: &GenerateRequest,
    source: InputImage,
) -> usize {
    let kind = provider.kind();
    let model = like.model.as_str();
    let (width, height) = source_size(&source);
    let mut calls = 0;
    let mut edit = |request: EditRequest, events: Events| {
        check_edit(&request, caps).unwrap_or_else(|e| panic!("{kind}: invalid edit: {e}"));
        check_edit_images(&request).unwrap_or_else(|e| panic!("{kind}: invalid images: {e}"));
        calls += 1;
        async move {
            provider
                .edit_with_events(&request, &events)
                .await
                .unwrap_or_else(|e| panic!("{kind}: edit: {e}"))
        }
    };

    let mut one = EditRequest::new("conformance: make the circle blue", model, vec![source]);
    one.options.size = like.options.size.clone();
    let result = edit(one.clone(), Events::none()).await;
    assert_images(kind, &result, model, 1, (width, height), ImageFormat::Png);

    let mut two = one.clone();
    two.options.n = Some(2);
    let mask = image::RgbaImage::from_pixel(width, height, image::Rgba([0, 0, 0, 0]));
    let mut mask_png = Cursor::new(Vec::new());
    mask.write_to(&mut mask_png, image::ImageFormat::Png)
        .unwrap();
    two.mask = Some(InputImage::new(
        mask_png.into_inner(),
        ImageFormat::Png,
        "mask.png",
    ));
    let result = edit(two, Events::none()).await;
    assert_images(kind, &result, model, 2, (width, height), ImageFormat::Png);

    if caps.takes(Param::OutputFormat) && caps.formats.contains(&ImageFormat::Jpeg) {
        let mut req = one.clone();
        req.options.output_format = Some(ImageFormat::Jpeg);
        let result = edit(req, Events::none()).await;
        assert_images(kind, &result, model, 1, (width, height), ImageFormat::Jpeg);
    }

    if caps.formats.contains(&ImageFormat::Gif) && caps.gif.is_some() {
        let mut req = one.clone();
        req.options.size = Some(format!("{GIF_SIDE}x{GIF_SIDE}"));
        req.options.output_format = Some(ImageFormat::Gif);
        req.options.frame_count = Some(3);
        let result = edit(req, Events::none()).await;
        assert_images(
            kind,
            &result,
            model,
            1,
            (GIF_SIDE, GIF_SIDE),
            ImageFormat::Gif,
        );
    }

    if caps.takes(Param::Stream) {
        let mut req = one.clone();
        req.options.partial_images = Some(2);
        let (events, mut rx) = Events::channel();
        let result = edit(req, events).await;
        assert_images(kind, &result, model, 1, (width, height), ImageFormat::Png);
        let mut partials = Vec::new();
        while let Some(event) = rx.recv().await {
            if let ProviderEvent::PartialImage { index, .. } = event {
                partials.push(index);
            }
        }
        assert_eq!(partials, [0, 1], "{kind}: partial edit images in order");
    }
    calls
}

fn source_size(image: &InputImage) -> (u32, u32) {
    let info = probe(&image.bytes).expect("the source image is readable");
    (info.width, info.height)
}

/// The frame side of the suite's animations: under every model's GIF frame cap.
const GIF_SIDE: u32 = 256;

/// Checks `result` holds `n` images of `format` at the size asked for, read from the bytes
/// themselves: raster and GIF images decode (a GIF has more than one frame), SVGs measure.
pub fn assert_images(
    kind: &str,
    result: &GenerateResult,
    model: &str,
    n: usize,
    (width, height): (u32, u32),
    format: ImageFormat,
) {
    assert_eq!(result.model, model, "{kind}");
    assert_eq!(result.images.len(), n, "{kind}");
    for img in &result.images {
        assert_eq!(img.format, format, "{kind}");
        assert_eq!(img.mime(), format.mime(), "{kind}");
        assert_eq!(ImageFormat::sniff(&img.bytes), Some(format), "{kind}");
        assert_eq!((img.width, img.height), (width, height), "{kind}");
        let info = probe(&img.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!((info.width, info.height), (width, height), "{kind}");
        assert_eq!(img.frames, info.frames, "{kind}: frames as the bytes say");
        match format {
            ImageFormat::Gif => assert!(info.frames > 1, "{kind}: a GIF of one frame"),
            _ => assert_eq!(info.frames, 1, "{kind}: {format} is still"),
        }
        if format == ImageFormat::Svg {
            let text = std::str::from_utf8(&img.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert!(
                text.trim_end().ends_with("</svg>"),
                "{kind}: a whole SVG document"
            );
            continue;
        }
        let decoded = image::load_from_memory(&img.bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            (decoded.width(), decoded.height()),
            (width, height),
            "{kind}"
        );
    }
}
