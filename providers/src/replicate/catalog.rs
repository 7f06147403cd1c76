//! Image models Replicate hosts that this provider knows (re-checked 2026-12-01), and how
//! each takes `n`: Replicate models name their inputs themselves.

use crate::{GifRules, ImageFormat, ModelCapabilities, Param};

/// How a model takes `n`: its own input name and maximum, or none (one image per prediction,
/// so `n` above 1 is that many predictions at once).
pub(crate) fn n_input(model: &str) -> Option<(&'static str, u32)> {
    match model {
        "black-forest-labs/flux-schnell" | "black-forest-labs/flux-dev" => Some(("num_outputs", 4)),
        m if m.starts_with("openai/gpt-image-2.6-") => Some(("number_of_images", 10)),
        _ => None,
    }
}

/// `(model, capabilities)` for every Replicate model this provider knows.
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    let flux = |note: &str, edit: bool| {
        let mut caps = base(note);
        caps.formats = vec![ImageFormat::Webp, ImageFormat::Jpeg, ImageFormat::Png];
        caps.edit = edit;
        caps.max_edit_images = u32::from(edit);
        caps.extra_params = ["safety_tolerance", "output_quality", "prompt_upsampling"]
            .map(String::from)
            .to_vec();
        caps
    };
    let mut schnell = flux(
        "FLUX.1 [schnell] on Replicate: the fastest and cheapest; up to 4 images per prediction",
        false,
    );
    schnell.extra_params = [
        "num_inference_steps",
        "output_quality",
        "disable_safety_checker",
        "go_fast",
    ]
    .map(String::from)
    .to_vec();
    let gpt = |note: &str| {
        let mut caps = base(note);
        caps.max_n = 10;
        caps.formats = ImageFormat::ALL.to_vec();
        caps.params.extend([Param::Complexity, Param::FrameCount]);
        caps.complexities = ["low", "medium", "high"].map(String::from).to_vec();
        caps.gif = Some(GifRules::default());
        caps
    };
    vec![
        ("black-forest-labs/flux-schnell", schnell),
        (
            "black-forest-labs/flux-1.1-pro",
            flux("FLUX1.1 [pro] on Replicate: one image per prediction", false),
        ),
        (
            "black-forest-labs/flux-2-pro",
            flux("FLUX.2 [pro] on Replicate (unconfirmed listing): one image per prediction", false),
        ),
        (
            "black-forest-labs/flux-kontext-pro",
            flux("FLUX.1 Kontext [pro] on Replicate: edits one image (`input_image`) by instruction", true),
        ),
        (
            "openai/gpt-image-2.6-flare",
            gpt("GPT Image 2.6 flare hosted by Replicate, with Replicate's input names (`number_of_images` 1-10)"),
        ),
        (
            "openai/gpt-image-2.6-sunburst",
            gpt("GPT Image 2.6 sunburst hosted by Replicate, with Replicate's input names (`number_of_images` 1-10)"),
        ),
    ]
}

fn base(note: &str) -> ModelCapabilities {
    let mut caps = ModelCapabilities::unknown();
    // Replicate's image models are sized by aspect ratio.
    caps.sizes = Vec::new();
    caps.custom_sizes = None;
    caps.max_n = 4;
    caps.max_prompt_chars = 10_000;
    caps.edit = false;
    caps.max_edit_images = 0;
    caps.variations = false;
    caps.params = vec![
        Param::AspectRatio,
        Param::N,
        Param::OutputFormat,
        Param::Seed,
        Param::Extra,
    ];
    caps.known = true;
    caps.note = Some(format!("{note}; billed by Replicate per image"));
    caps
}
