//! The FLUX models BFL's API serves (re-checked 2026-12-01), with prices as notes.
//!
//! Size rules and reference-image limits are BFL's as third parties describe them; where the
//! reference has no figure the entry says so, and `[providers.NAME.models."x"]` corrects it.

use crate::{ImageFormat, ModelCapabilities, Param, SizeRule};

/// `(model, capabilities)` for every BFL endpoint this provider knows.
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    let flux2 = |max_edit_images: u32, extra: &[&str], note: &str| {
        let mut caps = base(note);
        caps.sizes = vec!["1024x1024".into(), "1440x1024".into(), "1024x1440".into()];
        // Multiples of 16 up to 4 MP (unconfirmed: BFL's own page was not seen this pass).
        caps.custom_sizes = Some(SizeRule {
            multiple_of: 16,
            min_side: 64,
            max_side: 4096,
            max_ratio: 4.0,
            min_pixels: 64 * 64,
            max_pixels: 4_194_304,
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
        caps.edit = true;
        caps.max_edit_images = max_edit_images;
        caps.extra_params = extra.iter().map(|s| s.to_string()).collect();
        caps
    };
    let common = ["safety_tolerance", "prompt_upsampling"];
    let flex = ["safety_tolerance", "prompt_upsampling", "steps", "guidance"];
    let kontext = |note: &str| {
        let mut caps = base(note);
        // Kontext takes a ratio (21:9 to 9:21), not pixel sizes.
        caps.params = vec![
            Param::AspectRatio,
            Param::N,
            Param::OutputFormat,
            Param::Seed,
            Param::Extra,
        ];
        caps.edit = true;
        caps.max_edit_images = 1;
        caps.extra_params = common.iter().map(|s| s.to_string()).collect();
        caps
    };
    let flux1 = |note: &str| {
        let mut caps = base(note);
        caps.sizes = vec!["1024x1024".into(), "1440x1024".into(), "1024x1440".into()];
        caps.custom_sizes = Some(SizeRule {
            multiple_of: 32,
            min_side: 256,
            max_side: 1440,
            max_ratio: 5.625,
            min_pixels: 256 * 256,
            max_pixels: 1440 * 1440,
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
        caps.extra_params = common.iter().map(|s| s.to_string()).collect();
        caps
    };
    let mut ultra =
        base("FLUX1.1 [pro] ultra: up to 4 MP by aspect ratio; `raw` for a less processed look");
    ultra.params = vec![
        Param::AspectRatio,
        Param::N,
        Param::OutputFormat,
        Param::Seed,
        Param::Extra,
    ];
    ultra.extra_params = ["safety_tolerance", "raw"].map(String::from).to_vec();
    vec![
        (
            "flux-2-max",
            flux2(8, &common, "FLUX.2 [max]: $0.07 for the first megapixel, $0.03 per further MP (up to 8 reference images, unconfirmed)"),
        ),
        (
            "flux-2-pro",
            flux2(8, &common, "FLUX.2 [pro]: $0.03 for the first megapixel, $0.015 per further MP (up to 8 reference images, unconfirmed)"),
        ),
        (
            "flux-2-flex",
            flux2(8, &flex, "FLUX.2 [flex]: $0.05 for the first megapixel, $0.05 per further MP; `steps` and `guidance` tunable"),
        ),
        (
            "flux-2-klein-9b",
            flux2(4, &common, "FLUX.2 [klein] 9B: $0.015 for the first megapixel, $0.002 per further MP (up to 4 reference images, unconfirmed)"),
        ),
        (
            "flux-2-klein-4b",
            flux2(4, &common, "FLUX.2 [klein] 4B, the fastest: $0.014 for the first megapixel, $0.001 per further MP (up to 4 reference images, unconfirmed)"),
        ),
        ("flux-kontext-max", kontext("FLUX.1 Kontext [max]: edits one image by instruction; sized by aspect ratio")),
        ("flux-kontext-pro", kontext("FLUX.1 Kontext [pro]: edits one image by instruction; sized by aspect ratio")),
        ("flux-pro-1.1-ultra", ultra),
        ("flux-pro-1.1", flux1("FLUX1.1 [pro]: the previous generation; prefer FLUX.2")),
        ("flux-pro", flux1("FLUX.1 [pro]: the first generation; prefer FLUX.2")),
        ("flux-dev", flux1("FLUX.1 [dev] through BFL's API; prefer FLUX.2 [klein]")),
    ]
}

fn base(note: &str) -> ModelCapabilities {
    let mut caps = ModelCapabilities::unknown();
    caps.sizes = Vec::new();
    caps.custom_sizes = None;
    // One image per task: `n` above 1 is that many tasks at once.
    caps.max_n = 4;
    caps.formats = vec![ImageFormat::Jpeg, ImageFormat::Png];
    caps.max_prompt_chars = 10_000;
    caps.edit = false;
    caps.max_edit_images = 0;
    caps.variations = false;
    caps.known = true;
    caps.note = Some(note.to_string());
    caps
}
