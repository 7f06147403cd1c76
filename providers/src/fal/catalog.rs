//! fal.ai image endpoints this provider knows (re-checked 2026-12-01). The reference lists
//! none by name, so every entry is *unconfirmed* beyond the queue API itself; configuration
//! (`[providers.NAME.models."x"]`) adds or corrects any.

use crate::{ImageFormat, ModelCapabilities, Param, SizeRule};

/// `(model, capabilities)` for every fal endpoint this provider knows.
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    let sized = |note: &str| {
        let mut caps = base(note);
        caps.sizes = vec!["1024x1024".into(), "1024x768".into(), "768x1024".into()];
        caps.custom_sizes = Some(SizeRule {
            multiple_of: 8,
            min_side: 256,
            max_side: 2048,
            max_ratio: 4.0,
            min_pixels: 256 * 256,
            max_pixels: 2048 * 2048,
        });
        caps.params = vec![
            Param::Size,
            Param::AspectRatio,
            Param::Resolution,
            Param::N,
            Param::OutputFormat,
            Param::Seed,
            Param::Extra,
        ];
        caps
    };
    let mut schnell = sized("FLUX.1 [schnell] on fal: the fastest; up to 4 images per request");
    schnell.extra_params = ["num_inference_steps", "enable_safety_checker"]
        .map(String::from)
        .to_vec();
    let mut dev = sized("FLUX.1 [dev] on fal: up to 4 images per request");
    dev.extra_params = [
        "num_inference_steps",
        "guidance_scale",
        "enable_safety_checker",
    ]
    .map(String::from)
    .to_vec();
    let mut pro = sized("FLUX1.1 [pro] on fal: up to 4 images per request");
    pro.extra_params = ["safety_tolerance", "enable_safety_checker"]
        .map(String::from)
        .to_vec();
    let mut kontext = base("FLUX.1 Kontext [pro] on fal: edits one image (`image_url`) by instruction, sized by aspect ratio");
    kontext.params = vec![
        Param::AspectRatio,
        Param::N,
        Param::OutputFormat,
        Param::Seed,
        Param::Extra,
    ];
    kontext.edit = true;
    kontext.max_edit_images = 1;
    kontext.extra_params = ["safety_tolerance", "guidance_scale"]
        .map(String::from)
        .to_vec();
    vec![
        ("fal-ai/flux/schnell", schnell),
        ("fal-ai/flux/dev", dev),
        ("fal-ai/flux-pro/v1.1", pro),
        ("fal-ai/flux-pro/kontext", kontext),
    ]
}

fn base(note: &str) -> ModelCapabilities {
    let mut caps = ModelCapabilities::unknown();
    caps.sizes = Vec::new();
    caps.custom_sizes = None;
    caps.max_n = 4;
    caps.formats = vec![ImageFormat::Jpeg, ImageFormat::Png];
    caps.max_prompt_chars = 10_000;
    caps.edit = false;
    caps.max_edit_images = 0;
    caps.variations = false;
    caps.known = true;
    caps.note = Some(format!(
        "{note}; billed by fal per image or megapixel (unconfirmed listing)"
    ));
    caps
}
