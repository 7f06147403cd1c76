//! Checking a request against a model's capabilities before any paid call.
//!
//! Every entry point (CLI, MCP tools) goes through [`check`] (edits: [`check_edit`] and
//! [`check_edit_images`]; variations: [`check_variation`] and [`check_variation_image`]), so a
//! request the model would reject never costs money and the error names the parameter and what
//! is allowed.

use crate::{
    image_info::{self, ImageInfo},
    EditRequest, GenerateRequest, ImageFormat, InputImage, ModelCapabilities, Param, ProviderError,
    VariationRequest,
};

/// `size` as it is checked and sent: trimmed, `WxH` with a lowercase `x` and no padding
/// around the sides, `auto` in lowercase; anything else only trimmed.
pub fn normalized_size(size: &str) -> String {
    let size = size.trim();
    if size.eq_ignore_ascii_case("auto") {
        return "auto".into();
    }
    match parse_size(size) {
        Some((w, h)) => format!("{w}x{h}"),
        None => size.to_string(),
    }
}

/// Parses `WxH` into its two sides.
pub fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (w, h) = size.split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

fn one_of(param: Param, value: &str, allowed: &[String], model: &str) -> Result<(), ProviderError> {
    if allowed.is_empty() || allowed.iter().any(|a| a == value) {
        return Ok(());
    }
    Err(ProviderError::invalid_param(
        param.as_str(),
        format!(
            "{} `{value}` is not supported by {model}; allowed: {}",
            param.as_str(),
            allowed.join(", ")
        ),
    ))
}

fn check_size(size: &str, caps: &ModelCapabilities, model: &str) -> Result<(), ProviderError> {
    check_size_under(size, caps, caps.custom_sizes.as_ref(), model)
}

/// Checks `size` against the fixed sizes and `rule` (the model's custom-size rule, or a
/// variant of it).
fn check_size_under(
    size: &str,
    caps: &ModelCapabilities,
    rule: Option<&crate::SizeRule>,
    model: &str,
) -> Result<(), ProviderError> {
    if caps.sizes.iter().any(|s| s == size) {
        return Ok(());
    }
    let fixed = caps.sizes.join(", ");
    let Some(rule) = rule else {
        return one_of(Param::Size, size, &caps.sizes, model);
    };
    let refuse = |why: String| {
        Err(ProviderError::invalid_param(
            "size",
            format!("size `{size}` is not supported by {model}: {why}; allowed: {fixed}, or WxH where {}",
                describe_rule(rule)),
        ))
    };
    match parse_size(size) {
        None => refuse("expected WIDTHxHEIGHT such as 1024x1024".into()),
        Some((w, h)) => match rule.violation(w, h) {
            Some(why) => refuse(why),
            None => Ok(()),
        },
    }
}

fn describe_rule(rule: &crate::SizeRule) -> String {
    let mut parts = Vec::new();
    if rule.multiple_of > 1 {
        parts.push(format!("sides are multiples of {}", rule.multiple_of));
    }
    parts.push(format!("sides are {}..{} px", rule.min_side, rule.max_side));
    if rule.max_ratio.is_finite() {
        parts.push(format!("the aspect ratio is at most {}:1", rule.max_ratio));
    }
    if rule.max_pixels < u64::MAX {
        parts.push(format!(
            "total pixels are {}..{}",
            rule.min_pixels, rule.max_pixels
        ));
    }
    parts.join(", ")
}

/// Checks every set field of `request` against `caps`; the error names the parameter and what is allowed.
pub fn check(request: &GenerateRequest, caps: &ModelCapabilities) -> Result<(), ProviderError> {
    check_for(request, caps, Operation::Generate)
}

/// Which operation a request's options are checked for: some options belong to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A generation from a prompt.
    Generate,
    /// An edit of input images.
    Edit,
}

impl Operation {
    /// Whether `param` means anything for this operation (whatever the model).
    pub fn allows(self, param: Param) -> bool {
        match param {
            Param::InputFidelity => self == Self::Edit,
            Param::Style => self == Self::Generate,
            _ => true,
        }
    }
}

/// [`check`] for `operation`: an edit's options are checked as an edit's.
pub fn check_for(
    request: &GenerateRequest,
    caps: &ModelCapabilities,
    operation: Operation,
) -> Result<(), ProviderError> {
    let model = request.model.as_str();
    let o = &request.options;
    for param in o.params_set() {
        if !operation.allows(param) {
            let only = match operation {
                Operation::Generate => "edits (`edit_image`)",
                Operation::Edit => "generations (`generate_image`)",
            };
            return Err(ProviderError::invalid_param(
                param.as_str(),
                format!("`{}` applies only to {only}", param.as_str()),
            ));
        }
    }
    if request.prompt.trim().is_empty() {
        return Err(ProviderError::invalid_param(
            "prompt",
            "prompt must not be empty",
        ));
    }
    let chars = request.prompt.chars().count();
    if chars > caps.max_prompt_chars {
        return Err(ProviderError::invalid_param(
            "prompt",
            format!(
                "prompt is {chars} characters; {model} accepts at most {}",
                caps.max_prompt_chars
            ),
        ));
    }
    if request.n() == 0 || request.n() > caps.max_n {
        return Err(ProviderError::invalid_param(
            "n",
            format!(
                "n = {} is not supported by {model}; allowed: 1..={}",
                request.n(),
                caps.max_n
            ),
        ));
    }
    // `extra` is checked key by key below, naming the key.
    for param in o.params_set().into_iter().filter(|&p| p != Param::Extra) {
        if !caps.takes(param) {
            // Callers set `partial_images`; `stream` is only how it travels.
            let (name, why) = match param {
                Param::Stream => ("partial_images", ": it cannot stream"),
                other => (other.as_str(), ""),
            };
            return Err(ProviderError::invalid_param(
                name,
                format!("{model} does not take the `{name}` parameter{why}"),
            ));
        }
    }
    if let Some(partials) = request.options.partial_images {
        if partials > 3 {
            return Err(ProviderError::invalid_param(
                "partial_images",
                format!("partial_images = {partials}; allowed: 0..=3"),
            ));
        }
        if request.n() > 1 {
            return Err(ProviderError::invalid_param(
                "partial_images",
                format!(
                    "partial_images streams one image, but n = {}; set n to 1 or leave partial_images unset",
                    request.n()
                ),
            ));
        }
    }
    if o.size.is_some() && (o.aspect_ratio.is_some() || o.resolution.is_some()) {
        return Err(ProviderError::invalid_param(
            "size",
            "give either `size` or `aspect_ratio`/`resolution`, not both",
        ));
    }
    if let Some(key) = o
        .extra
        .iter()
        .flat_map(|extra| extra.keys())
        .find(|key| !caps.extra_params.contains(key))
    {
        let declared = match caps.extra_params.as_slice() {
            [] => "it declares none".to_string(),
            names => format!("it declares: {}", names.join(", ")),
        };
        return Err(ProviderError::invalid_param(
            "extra",
            format!("{model} does not take the extra parameter `{key}`; {declared}"),
        ));
    }
    // A ratio is checked as the size it maps to, where the model takes sizes at all.
    let size = if caps.params.contains(&Param::Size) {
        crate::options::size_for(o, caps)?
    } else {
        o.size.clone()
    };
    let format = o.format();
    if format == ImageFormat::Gif {
        check_gif(request, size.as_deref(), caps)?;
    } else if let Some(size) = &size {
        check_size(size, caps, model)?;
    }
    for (param, set) in [
        (Param::FrameCount, request.options.frame_count.is_some()),
        (
            Param::FrameDurationMs,
            request.options.frame_duration_ms.is_some(),
        ),
    ] {
        if set && format != ImageFormat::Gif {
            return Err(ProviderError::invalid_param(
                param.as_str(),
                format!(
                    "{} applies only to animated GIFs; set output_format to gif or leave it unset",
                    param.as_str()
                ),
            ));
        }
    }
    check_svg(request, format)?;
    if let Some(quality) = &request.options.quality {
        one_of(Param::Quality, quality, &caps.qualities, model)?;
    }
    if let Some(complexity) = &request.options.complexity {
        one_of(Param::Complexity, complexity, &caps.complexities, model)?;
    }
    if let Some(style) = &request.options.style {
        one_of(Param::Style, style, &caps.styles, model)?;
    }
    if let Some(format) = request.options.output_format {
        if !caps.formats.contains(&format) {
            let allowed: Vec<_> = caps.formats.iter().map(|f| f.to_string()).collect();
            return Err(ProviderError::invalid_param(
                "output_format",
                format!(
                    "output_format `{format}` is not supported by {model}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    if let Some(compression) = request.options.output_compression {
        if compression > 100 {
            return Err(ProviderError::invalid_param(
                "output_compression",
                format!("output_compression = {compression}; allowed: 0..=100"),
            ));
        }
        let gif_compresses = caps.gif.as_ref().is_some_and(|g| g.compression);
        let compresses = match format {
            ImageFormat::Jpeg | ImageFormat::Webp => true,
            ImageFormat::Gif => gif_compresses,
            _ => false,
        };
        if !compresses {
            return Err(ProviderError::invalid_param(
                "output_compression",
                "output_compression applies only to jpeg and webp; set output_format to one of them",
            ));
        }
    }
    if let Some(background) = &request.options.background {
        let allowed = ["transparent", "opaque", "auto"].map(String::from);
        one_of(Param::Background, background, &allowed, model)?;
        if background == "transparent" && !format.supports_alpha() {
            return Err(ProviderError::invalid_param(
                "background",
                format!("background `transparent` needs output_format png or webp, not {format}"),
            ));
        }
    }
    if let Some(moderation) = &request.options.moderation {
        one_of(
            Param::Moderation,
            moderation,
            &["low", "auto"].map(String::from),
            model,
        )?;
    }
    Ok(())
}

/// Checks the animated-GIF settings against the model's GIF rules: frame count and duration
/// in range, no streaming, and a frame size within the sheet's budget for that many frames.
///
/// `size` is per frame, and all frames share one image, so the model's pixel floor for a
/// still image does not apply to a frame; the frame cap does instead.
fn check_gif(
    request: &GenerateRequest,
    size: Option<&str>,
    caps: &ModelCapabilities,
) -> Result<(), ProviderError> {
    let model = request.model.as_str();
    let Some(rules) = &caps.gif else {
        // The format check names what the model returns.
        return Ok(());
    };
    let frames = request.options.frame_count.unwrap_or(rules.default_frames);
    if !(rules.min_frames..=rules.max_frames).contains(&frames) {
        return Err(ProviderError::invalid_param(
            "frame_count",
            format!(
                "frame_count = {frames}; {model} makes {}..={} frames",
                rules.min_frames, rules.max_frames
            ),
        ));
    }
    if let Some(ms) = request.options.frame_duration_ms {
        if !(rules.min_frame_duration_ms..=rules.max_frame_duration_ms).contains(&ms) {
            return Err(ProviderError::invalid_param(
                "frame_duration_ms",
                format!(
                    "frame_duration_ms = {ms}; allowed: {}..={} (rounded to 10 ms)",
                    rules.min_frame_duration_ms, rules.max_frame_duration_ms
                ),
            ));
        }
    }
    if request.options.partial_images.is_some() && !rules.streaming {
        return Err(ProviderError::invalid_param(
            "partial_images",
            "animated GIFs cannot be streamed; leave partial_images unset with output_format gif",
        ));
    }
    let Some(size) = size.filter(|s| *s != "auto") else {
        return Ok(());
    };
    let frame_rule = caps.custom_sizes.clone().map(|mut rule| {
        rule.min_pixels = 1;
        rule
    });
    check_size_under(size, caps, frame_rule.as_ref(), model)?;
    if let (Some((w, h)), Some(max_side)) = (parse_size(size), rules.max_side(frames)) {
        if w.max(h) > max_side {
            return Err(ProviderError::invalid_param(
                "size",
                format!(
                    "GIF frames of {size} are too large for {frames} frames: all frames share one \
                     image, so a frame side may be at most {}; use a smaller size or fewer frames",
                    rules.describe_caps()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the SVG settings: `svg` only with `output_format = svg`, which makes one image and
/// needs the text model that writes it (`svg.model`).
fn check_svg(request: &GenerateRequest, format: ImageFormat) -> Result<(), ProviderError> {
    if format != ImageFormat::Svg {
        if request.options.svg.is_some() {
            return Err(ProviderError::invalid_param(
                "svg",
                "svg settings apply only to output_format svg",
            ));
        }
        return Ok(());
    }
    if request.n() > 1 {
        return Err(ProviderError::invalid_param(
            "n",
            format!(
                "output_format svg makes one image per call, but n = {}; set n to 1",
                request.n()
            ),
        ));
    }
    let model = request
        .options
        .svg
        .as_ref()
        .and_then(|s| s.model.as_deref());
    if model.is_none_or(|m| m.trim().is_empty()) {
        return Err(ProviderError::invalid_param(
            "svg.model",
            "output_format svg needs `svg.model`, the text model that writes the SVG (for \
             example {\"svg\": {\"model\": \"gpt-5.2\"}}); or set svg_model for the provider in \
             the configuration",
        ));
    }
    Ok(())
}

/// Checks an edit against `caps`: the model edits, the number of images fits, `input_fidelity`
/// is taken, and the parameters it shares with generation pass [`check`].
///
/// The image bytes are checked apart, by [`check_edit_images`], because they need no model.
pub fn check_edit(request: &EditRequest, caps: &ModelCapabilities) -> Result<(), ProviderError> {
    let model = request.model.as_str();
    if !caps.edit {
        return Err(ProviderError::unsupported(format!(
            "{model} cannot edit images; choose a model whose catalog entry has `edit = true`"
        )));
    }
    let count = request.images.len();
    if count == 0 {
        return Err(ProviderError::invalid_param(
            "images",
            "an edit needs at least one input image",
        ));
    }
    let max = caps.max_edit_images as usize;
    if count > max {
        let allowed = match max {
            1 => "exactly one input image".to_string(),
            _ => format!("at most {max} input images"),
        };
        return Err(ProviderError::invalid_param(
            "images",
            format!("{count} input images were given, but {model} takes {allowed} per edit"),
        ));
    }
    if request.markup.is_some() && !caps.takes(Param::Markup) {
        return Err(ProviderError::invalid_param(
            "markup",
            format!(
                "{model} does not take the `markup` parameter (markup edits are GPT Image 2.6's)"
            ),
        ));
    }
    let gif_mask = caps.gif.as_ref().is_some_and(|g| g.mask);
    if request.mask.is_some()
        && request.options.output_format == Some(ImageFormat::Gif)
        && !gif_mask
    {
        return Err(ProviderError::invalid_param(
            "mask",
            "an animated GIF edit cannot take a mask; leave the mask out or choose another output_format",
        ));
    }
    check_for(&request.as_generation(), caps, Operation::Edit)?;
    if let Some(fidelity) = &request.options.input_fidelity {
        one_of(
            Param::InputFidelity,
            fidelity,
            &["high", "low"].map(String::from),
            model,
        )?;
    }
    Ok(())
}

/// Checks the bytes of an edit's images and mask: every image is a readable PNG, JPEG or WebP
/// whose content matches its declared format, and the mask is a PNG with an alpha channel the
/// size of the first image. Only headers are read.
pub fn check_edit_images(request: &EditRequest) -> Result<(), ProviderError> {
    let mut first: Option<ImageInfo> = None;
    for (i, image) in request.images.iter().enumerate() {
        let info = check_input_image(
            &image.bytes,
            image.format,
            &format!("image {}", i + 1),
            "images",
        )?;
        first.get_or_insert(info);
    }
    for (layer, param, what) in [
        (&request.mask, "mask", "the mask"),
        (&request.markup, "markup", "the markup"),
    ] {
        if let Some(layer) = layer {
            check_layer(layer, param, what, first.as_ref())?;
        }
    }
    Ok(())
}

/// Checks a mask or markup layer: a PNG with an alpha channel the size of the first image.
fn check_layer(
    layer: &InputImage,
    param: &str,
    what: &str,
    first: Option<&ImageInfo>,
) -> Result<(), ProviderError> {
    let info = check_input_image(&layer.bytes, layer.format, what, param)?;
    let invalid = |message: String| Err(ProviderError::invalid_param(param, message));
    if info.format != ImageFormat::Png {
        return invalid(format!(
            "{what} must be a PNG with an alpha channel, but it is a {} image",
            info.format.as_str().to_uppercase()
        ));
    }
    let why = match param {
        "mask" => "its transparent pixels mark where to edit",
        _ => "it holds only the annotations, on a transparent background",
    };
    match image_info::png_has_alpha(&layer.bytes) {
        Ok(true) => {}
        Ok(false) => {
            return invalid(format!(
                "{what} has no alpha channel: {why}, so it must be a PNG with transparency \
                 (RGBA or grey with alpha)"
            ))
        }
        Err(e) => return invalid(format!("{what} cannot be read: {e}")),
    }
    if let Some(first) = first {
        if (info.width, info.height) != (first.width, first.height) {
            return invalid(format!(
                "{param} is {}x{} but the first image is {}x{}; they must be the same size",
                info.width, info.height, first.width, first.height
            ));
        }
    }
    Ok(())
}

/// Checks a variation against `caps`: the model makes variations, and `n` and `size` fit.
///
/// `supporting` lists the models that can make variations (see
/// [`Catalog::variation_models`](crate::Catalog::variation_models)), named when this one cannot.
pub fn check_variation(
    request: &VariationRequest,
    caps: &ModelCapabilities,
    supporting: &[String],
) -> Result<(), ProviderError> {
    let model = request.model.as_str();
    if !caps.variations {
        return Err(variations_unsupported(model, supporting));
    }
    if request.n == 0 || request.n > caps.max_n {
        return Err(ProviderError::invalid_param(
            "n",
            format!(
                "n = {} is not supported by {model}; allowed: 1..={}",
                request.n, caps.max_n
            ),
        ));
    }
    if let Some(size) = &request.size {
        check_size(size, caps, model)?;
    }
    Ok(())
}

/// Checks the bytes of a variation's source image, as [`check_edit_images`] does for edits.
pub fn check_variation_image(request: &VariationRequest) -> Result<(), ProviderError> {
    let image = &request.image;
    check_input_image(&image.bytes, image.format, "the image", "image").map(|_| ())
}

/// The `unsupported` error for a variation on `model`, naming the models that can make them.
pub fn variations_unsupported(model: &str, supporting: &[String]) -> ProviderError {
    let alternatives = match supporting {
        [] => "no model in the catalog can".to_string(),
        names => format!("models that can: {}", names.join(", ")),
    };
    ProviderError::unsupported(format!(
        "{model} cannot make image variations; {alternatives}"
    ))
}

/// Reads the header of one input image, called `what` in messages, declared as `declared`.
fn check_input_image(
    bytes: &[u8],
    declared: ImageFormat,
    what: &str,
    param: &str,
) -> Result<ImageInfo, ProviderError> {
    let invalid = |message: String| ProviderError::invalid_param(param, message);
    let Some(format) = image_info::sniff(bytes).filter(|f| f.is_raster()) else {
        return Err(invalid(format!(
            "{what} {}",
            image_info::not_an_image(bytes)
        )));
    };
    if format != declared {
        // The declared format becomes the upload's content type; a mismatch confuses servers.
        return Err(invalid(format!(
            "{what} is declared as {declared} but its bytes are a {} image",
            format.as_str().to_uppercase()
        )));
    }
    image_info::probe(bytes).map_err(|e| invalid(format!("{what} cannot be read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Catalog, ErrorKind, InputImage};

    fn req(model: &str) -> GenerateRequest {
        GenerateRequest::new("a lighthouse at dusk", model)
    }

    fn refused(r: &GenerateRequest) -> ProviderError {
        let err = check(r, &Catalog::builtin().get(&r.model)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert!(!err.retryable);
        err
    }

    #[test]
    fn fixed_sizes_are_listed_when_refused() {
        let mut r = req("gpt-image-1.5");
        r.options.size = Some("1792x1024".into());
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("size"));
        assert!(err.message.contains("1536x1024"), "{}", err.message);
        r.options.size = Some("1536x1024".into());
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
    }

    #[test]
    fn gpt_image_2_takes_custom_sizes_within_its_rules() {
        let mut r = req("gpt-image-2");
        r.options.size = Some("2048x1152".into());
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.options.size = Some("2008x1152".into());
        assert!(refused(&r).message.contains("multiples of 16"));
        r.options.size = Some("big".into());
        assert!(refused(&r).message.contains("WIDTHxHEIGHT"));
    }

    #[test]
    fn n_and_prompt_length_follow_the_model() {
        let mut r = req("dall-e-3");
        r.options.n = Some(2);
        assert_eq!(refused(&r).param.as_deref(), Some("n"));
        let mut r = req("dall-e-2");
        r.prompt = "x".repeat(1001);
        assert!(refused(&r).message.contains("1000"));
        let mut r = req("gpt-image-1.5");
        r.prompt = "   ".into();
        assert_eq!(refused(&r).param.as_deref(), Some("prompt"));
    }

    #[test]
    fn parameters_the_model_does_not_take_are_refused_by_name() {
        let mut r = req("dall-e-3");
        r.options.moderation = Some("low".into());
        assert!(refused(&r).message.contains("`moderation`"));
        let mut r = req("gpt-image-1.5");
        r.options.style = Some("vivid".into());
        assert_eq!(refused(&r).param.as_deref(), Some("style"));
    }

    #[test]
    fn transparency_needs_an_alpha_format_and_compression_a_lossy_one() {
        let mut r = req("gpt-image-1.5");
        r.options.background = Some("transparent".into());
        r.options.output_format = Some(ImageFormat::Jpeg);
        assert!(refused(&r).message.contains("png or webp"));
        r.options.output_format = Some(ImageFormat::Webp);
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        let mut r = req("gpt-image-1.5");
        r.options.output_compression = Some(50);
        assert_eq!(refused(&r).param.as_deref(), Some("output_compression"));
    }

    #[test]
    fn partial_images_need_a_streaming_model_one_image_and_at_most_three() {
        let mut r = req("gpt-image-1.5");
        r.options.partial_images = Some(3);
        assert_eq!(r.options.params_set(), vec![Param::Stream]);
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.options.partial_images = Some(4);
        assert!(refused(&r).message.contains("0..=3"));
        r.options.partial_images = Some(2);
        r.options.n = Some(2);
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("partial_images"));
        assert!(err.message.contains("n = 2"), "{}", err.message);
        let mut r = req("dall-e-3");
        r.options.partial_images = Some(1);
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("partial_images"));
        assert!(err.message.contains("cannot stream"), "{}", err.message);
    }

    fn png(width: u32, height: u32, alpha: bool) -> bytes::Bytes {
        let mut out = std::io::Cursor::new(Vec::new());
        let img = match alpha {
            true => image::DynamicImage::ImageRgba8(image::RgbaImage::new(width, height)),
            false => image::DynamicImage::ImageRgb8(image::RgbImage::new(width, height)),
        };
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner().into()
    }

    fn input(bytes: bytes::Bytes) -> InputImage {
        InputImage::new(bytes, ImageFormat::Png, "image.png")
    }

    fn edit(model: &str, images: usize) -> EditRequest {
        let images = (0..images).map(|_| input(png(64, 64, false))).collect();
        EditRequest::new("add a red hat", model, images)
    }

    fn edit_refused(r: &EditRequest) -> ProviderError {
        check_edit(r, &Catalog::builtin().get(&r.model)).unwrap_err()
    }

    fn images_refused(r: &EditRequest) -> ProviderError {
        let err = check_edit_images(r).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        err
    }

    #[test]
    fn edits_need_an_editing_model_and_a_number_of_images_it_takes() {
        assert!(check_edit(
            &edit("gpt-image-1.5", 16),
            &Catalog::builtin().get("gpt-image-1.5")
        )
        .is_ok());
        let err = edit_refused(&edit("dall-e-3", 1));
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(
            err.message.contains("dall-e-3 cannot edit"),
            "{}",
            err.message
        );
        let err = edit_refused(&edit("gpt-image-1.5", 17));
        assert_eq!(err.param.as_deref(), Some("images"));
        assert!(err.message.contains("at most 16"), "{}", err.message);
        let err = edit_refused(&edit("dall-e-2", 2));
        assert!(err.message.contains("exactly one"), "{}", err.message);
        assert_eq!(
            edit_refused(&edit("gpt-image-1.5", 0)).param.as_deref(),
            Some("images")
        );
    }

    #[test]
    fn input_fidelity_only_where_the_model_takes_it_and_shared_checks_apply() {
        let mut r = edit("gpt-image-1.5", 1);
        r.options.input_fidelity = Some("high".into());
        assert!(check_edit(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.options.input_fidelity = Some("medium".into());
        assert!(edit_refused(&r).message.contains("allowed: high, low"));
        let mut r = edit("gpt-image-1-mini", 1);
        r.options.input_fidelity = Some("high".into());
        assert_eq!(edit_refused(&r).param.as_deref(), Some("input_fidelity"));
        let mut r = edit("gpt-image-1.5", 1);
        r.options.size = Some("1792x1024".into());
        assert_eq!(edit_refused(&r).param.as_deref(), Some("size"));
        let mut r = edit("dall-e-2", 1);
        r.options.output_format = Some(ImageFormat::Webp);
        assert_eq!(edit_refused(&r).param.as_deref(), Some("output_format"));
    }

    #[test]
    fn non_images_and_mislabelled_images_are_named_by_position() {
        let mut r = edit("gpt-image-1.5", 2);
        r.images[1] = input(bytes::Bytes::from_static(b"%PDF-1.7 a document"));
        assert_eq!(
            images_refused(&r).message,
            "image 2 is not a PNG, JPEG or WebP image (starts with bytes 25 50 44 46…)"
        );
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        r.images[1] = input(jpeg.into_inner().into());
        let err = images_refused(&r);
        assert!(
            err.message
                .contains("image 2 is declared as png but its bytes are a JPEG"),
            "{}",
            err.message
        );
        r.images[1].format = ImageFormat::Jpeg;
        assert!(check_edit_images(&r).is_ok());
    }

    #[test]
    fn the_mask_is_a_png_with_alpha_the_size_of_the_first_image() {
        let mut r = edit("gpt-image-1.5", 1);
        r.mask = Some(input(png(64, 64, true)));
        assert!(check_edit_images(&r).is_ok());
        r.mask = Some(input(png(32, 64, true)));
        let err = images_refused(&r);
        assert_eq!(err.param.as_deref(), Some("mask"));
        assert!(
            err.message
                .starts_with("mask is 32x64 but the first image is 64x64"),
            "{}",
            err.message
        );
        r.mask = Some(input(png(64, 64, false)));
        assert!(images_refused(&r).message.contains("no alpha channel"));
        r.mask = Some(input(bytes::Bytes::from_static(b"GIF89a......")));
        assert!(images_refused(&r)
            .message
            .starts_with("the mask is not a PNG, JPEG or WebP image"));
    }

    #[test]
    fn variations_name_the_models_that_can_make_them() {
        let catalog = Catalog::builtin();
        let supporting = catalog.variation_models();
        let image = input(png(64, 64, false));
        let r = VariationRequest::new("gpt-image-1.5", image.clone());
        let err = check_variation(&r, &catalog.get(&r.model), &supporting).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(
            err.message.contains("models that can: dall-e-2"),
            "{}",
            err.message
        );
        let err = check_variation(&r, &catalog.get(&r.model), &[]).unwrap_err();
        assert!(
            err.message.contains("no model in the catalog"),
            "{}",
            err.message
        );
        let mut r = VariationRequest::new("dall-e-2", image);
        r.size = Some("512x512".into());
        assert!(check_variation(&r, &catalog.get(&r.model), &supporting).is_ok());
        assert!(check_variation_image(&r).is_ok());
        r.size = Some("1536x1024".into());
        let err = check_variation(&r, &catalog.get(&r.model), &supporting).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("size"));
        r.image = input(bytes::Bytes::from_static(b"nope"));
        assert!(check_variation_image(&r)
            .unwrap_err()
            .message
            .starts_with("the image is not"));
    }

    #[test]
    fn gif_frames_share_one_sheet_so_bigger_frames_allow_fewer_of_them() {
        let mut r = req("gpt-image-2.6-flare");
        r.options.output_format = Some(ImageFormat::Gif);
        r.options.size = Some("960x960".into());
        assert!(
            check(&r, &Catalog::builtin().get(&r.model)).is_ok(),
            "9 frames by default"
        );
        r.options.frame_count = Some(10);
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("size"));
        assert!(
            err.message.contains("816 px for 10-12 frames"),
            "{}",
            err.message
        );
        // A 720 px frame is below a still image's pixel floor, yet a valid frame.
        r.options.frame_count = Some(16);
        r.options.size = Some("720x720".into());
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.options.output_compression = Some(50);
        assert_eq!(refused(&r).param.as_deref(), Some("output_compression"));
    }

    #[test]
    fn svg_needs_its_writer_and_makes_one_image() {
        let mut r = req("gpt-image-2.6-sunburst");
        r.options.output_format = Some(ImageFormat::Svg);
        assert_eq!(refused(&r).param.as_deref(), Some("svg.model"));
        r.options.svg = Some(crate::SvgOptions {
            model: Some("gpt-5.2".into()),
            reasoning: None,
        });
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.options.n = Some(2);
        assert_eq!(refused(&r).param.as_deref(), Some("n"));
        let mut r = req("gpt-image-2.5-flare");
        r.options.complexity = Some("low".into());
        assert!(refused(&r)
            .message
            .contains("does not take the `complexity` parameter"));
    }

    #[test]
    fn markup_is_a_transparent_png_the_size_of_the_first_image() {
        let mut r = edit("gpt-image-2.6-flare", 1);
        r.markup = Some(input(png(64, 64, true)));
        assert!(check_edit(&r, &Catalog::builtin().get(&r.model)).is_ok());
        assert!(check_edit_images(&r).is_ok());
        r.markup = Some(input(png(64, 32, true)));
        assert!(images_refused(&r).message.starts_with("markup is 64x32"));
        r.markup = Some(input(png(64, 64, false)));
        assert!(images_refused(&r)
            .message
            .contains("the markup has no alpha channel"));
        let mut r = edit("gpt-image-2", 1);
        r.markup = Some(input(png(64, 64, true)));
        assert_eq!(edit_refused(&r).param.as_deref(), Some("markup"));
    }

    #[test]
    fn options_are_checked_for_their_operation_shape_and_declared_extras() {
        let mut r = req("gpt-image-2");
        r.options.aspect_ratio = Some("16:9".into());
        r.options.resolution = Some(crate::Resolution::FourK);
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.options.size = Some("1024x1024".into());
        assert_eq!(refused(&r).param.as_deref(), Some("size"));
        r.options.size = None;
        r.options.aspect_ratio = Some("wide".into());
        assert_eq!(refused(&r).param.as_deref(), Some("aspect_ratio"));

        let mut r = req("gpt-image-2");
        r.options.input_fidelity = Some("high".into());
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("input_fidelity"));
        assert!(err.message.contains("only to edits"), "{}", err.message);
        let mut e = edit("gpt-image-2", 1);
        e.options.style = Some("vivid".into());
        assert_eq!(edit_refused(&e).param.as_deref(), Some("style"));

        let mut r = req("gpt-image-2");
        r.options.extra = Some(serde_json::Map::from_iter([("magic".into(), 1.into())]));
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("extra"));
        assert!(err.message.contains("`magic`"), "{}", err.message);
        let mut caps = Catalog::builtin().get(&r.model);
        caps.extra_params = vec!["magic".into()];
        assert!(check(&r, &caps).is_ok());
    }
}
