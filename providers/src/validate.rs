//! Checking a request against a model's capabilities before any paid call.
//!
//! Every entry point (CLI, MCP tools) goes through [`check`], so a request the model would
//! reject never costs money and the error names the parameter and what is allowed.

use crate::{GenerateRequest, ImageFormat, ModelCapabilities, Param, ProviderError};

/// The optional parameters `request` sets.
pub fn params_set(request: &GenerateRequest) -> Vec<Param> {
    let r = request;
    [
        (Param::Size, r.size.is_some()),
        (Param::Quality, r.quality.is_some()),
        (Param::N, r.n > 1),
        (Param::OutputFormat, r.output_format.is_some()),
        (Param::OutputCompression, r.output_compression.is_some()),
        (Param::Background, r.background.is_some()),
        (Param::Style, r.style.is_some()),
        (Param::Moderation, r.moderation.is_some()),
        (Param::Seed, r.seed.is_some()),
        (Param::Stream, r.partial_images.is_some()),
    ]
    .into_iter()
    .filter_map(|(p, set)| set.then_some(p))
    .collect()
}

/// Unsets `param` in `request`, so the provider's own default applies.
pub fn clear_param(request: &mut GenerateRequest, param: Param) {
    match param {
        Param::Size => request.size = None,
        Param::Quality => request.quality = None,
        Param::N => request.n = 1,
        Param::OutputFormat => request.output_format = None,
        Param::OutputCompression => request.output_compression = None,
        Param::Background => request.background = None,
        Param::Style => request.style = None,
        Param::Moderation => request.moderation = None,
        Param::Seed => request.seed = None,
        Param::Stream => request.partial_images = None,
        Param::ResponseFormat | Param::InputFidelity => {}
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
    if caps.sizes.iter().any(|s| s == size) {
        return Ok(());
    }
    let fixed = caps.sizes.join(", ");
    let Some(rule) = &caps.custom_sizes else {
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
    let model = request.model.as_str();
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
    if request.n == 0 || request.n > caps.max_n {
        return Err(ProviderError::invalid_param(
            "n",
            format!(
                "n = {} is not supported by {model}; allowed: 1..={}",
                request.n, caps.max_n
            ),
        ));
    }
    for param in params_set(request) {
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
    if let Some(partials) = request.partial_images {
        if partials > 3 {
            return Err(ProviderError::invalid_param(
                "partial_images",
                format!("partial_images = {partials}; allowed: 0..=3"),
            ));
        }
        if request.n > 1 {
            return Err(ProviderError::invalid_param(
                "partial_images",
                format!(
                    "partial_images streams one image, but n = {}; set n to 1 or leave partial_images unset",
                    request.n
                ),
            ));
        }
    }
    if let Some(size) = &request.size {
        check_size(size, caps, model)?;
    }
    if let Some(quality) = &request.quality {
        one_of(Param::Quality, quality, &caps.qualities, model)?;
    }
    if let Some(style) = &request.style {
        one_of(Param::Style, style, &caps.styles, model)?;
    }
    if let Some(format) = request.output_format {
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
    let format = request.output_format.unwrap_or(ImageFormat::Png);
    if let Some(compression) = request.output_compression {
        if compression > 100 {
            return Err(ProviderError::invalid_param(
                "output_compression",
                format!("output_compression = {compression}; allowed: 0..=100"),
            ));
        }
        if format == ImageFormat::Png {
            return Err(ProviderError::invalid_param(
                "output_compression",
                "output_compression applies only to jpeg and webp; set output_format to one of them",
            ));
        }
    }
    if let Some(background) = &request.background {
        let allowed = ["transparent", "opaque", "auto"].map(String::from);
        one_of(Param::Background, background, &allowed, model)?;
        if background == "transparent" && !format.supports_alpha() {
            return Err(ProviderError::invalid_param(
                "background",
                format!("background `transparent` needs output_format png or webp, not {format}"),
            ));
        }
    }
    if let Some(moderation) = &request.moderation {
        one_of(
            Param::Moderation,
            moderation,
            &["low", "auto"].map(String::from),
            model,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Catalog, ErrorKind};

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
        r.size = Some("1792x1024".into());
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("size"));
        assert!(err.message.contains("1536x1024"), "{}", err.message);
        r.size = Some("1536x1024".into());
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
    }

    #[test]
    fn gpt_image_2_takes_custom_sizes_within_its_rules() {
        let mut r = req("gpt-image-2");
        r.size = Some("2048x1152".into());
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.size = Some("2008x1152".into());
        assert!(refused(&r).message.contains("multiples of 16"));
        r.size = Some("big".into());
        assert!(refused(&r).message.contains("WIDTHxHEIGHT"));
    }

    #[test]
    fn n_and_prompt_length_follow_the_model() {
        let mut r = req("dall-e-3");
        r.n = 2;
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
        r.moderation = Some("low".into());
        assert!(refused(&r).message.contains("`moderation`"));
        let mut r = req("gpt-image-1.5");
        r.style = Some("vivid".into());
        assert_eq!(refused(&r).param.as_deref(), Some("style"));
    }

    #[test]
    fn transparency_needs_an_alpha_format_and_compression_a_lossy_one() {
        let mut r = req("gpt-image-1.5");
        r.background = Some("transparent".into());
        r.output_format = Some(ImageFormat::Jpeg);
        assert!(refused(&r).message.contains("png or webp"));
        r.output_format = Some(ImageFormat::Webp);
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        let mut r = req("gpt-image-1.5");
        r.output_compression = Some(50);
        assert_eq!(refused(&r).param.as_deref(), Some("output_compression"));
    }

    #[test]
    fn partial_images_need_a_streaming_model_one_image_and_at_most_three() {
        let mut r = req("gpt-image-1.5");
        r.partial_images = Some(3);
        assert_eq!(params_set(&r), vec![Param::Stream]);
        assert!(check(&r, &Catalog::builtin().get(&r.model)).is_ok());
        r.partial_images = Some(4);
        assert!(refused(&r).message.contains("0..=3"));
        r.partial_images = Some(2);
        r.n = 2;
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("partial_images"));
        assert!(err.message.contains("n = 2"), "{}", err.message);
        let mut r = req("dall-e-3");
        r.partial_images = Some(1);
        let err = refused(&r);
        assert_eq!(err.param.as_deref(), Some("partial_images"));
        assert!(err.message.contains("cannot stream"), "{}", err.message);
    }

    #[test]
    fn clearing_every_set_param_leaves_nothing_set() {
        let mut r = req("gpt-image-1.5");
        r.size = Some("auto".into());
        r.n = 3;
        r.seed = Some(1);
        r.partial_images = Some(1);
        r.style = Some("vivid".into());
        for p in params_set(&r) {
            clear_param(&mut r, p);
        }
        assert!(params_set(&r).is_empty());
    }
}
