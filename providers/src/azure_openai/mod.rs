//! Azure OpenAI (Microsoft Foundry) image models (`kind = "azure_openai"`), on the OpenAI engine.
//!
//! Generations go to the v1 API, `POST {endpoint}/openai/v1/images/generations?api-version=preview`,
//! with **`model` = the deployment name** (the name given to the deployment in Azure, which
//! need not be the model's). Edits go to the deployment-scoped path Azure still documents for
//! them, `POST {endpoint}/openai/deployments/{deployment}/images/edits?api-version=2025-04-01-preview`
//! (`edits_on_v1 = true` sends them to the v1 path instead). The credential is an `api-key`
//! header (a key of the pool) or an Entra ID bearer token read from a file or printed by a
//! command (`az account get-access-token ...`), refreshed when due and once more after a 401.
//!
//! What differs from OpenAI is data: Azure's catalog entries (no WEBP, its own retirement
//! dates) and which model each deployment serves, so requests are checked by that model's
//! rules; and the error reading in [`error`]: content-filter verdicts in any of their shapes
//! are `content_policy`, and a 404 says the deployment-versus-model-name mix-up it most
//! likely is.

mod config;
mod error;

pub use config::{Config, STANDARD_ENV};

use crate::{Catalog, ImageFormat, ModelCapabilities};

/// The deployment used when neither `model` nor `deployment` names one: a deployment named
/// after the model, as Azure's own examples name them.
pub const DEFAULT_MODEL: &str = "gpt-image-2";

/// The `api-version` of the v1 API's image routes.
pub const DEFAULT_API_VERSION: &str = "preview";

/// The `api-version` of the deployment-scoped edits path.
pub const DEFAULT_EDIT_API_VERSION: &str = "2025-04-01-preview";

/// What replaces a model Azure retires: its newest GA image model.
const AZURE_REPLACEMENT: &str = "gpt-image-2";

/// `model`'s shared entry as Azure serves it: PNG and JPEG only, retiring on `retires`.
fn azure(model: &str, retires: Option<&str>, note: Option<&str>) -> ModelCapabilities {
    let mut caps = Catalog::builtin_entry(model);
    caps.formats.retain(|f| *f != ImageFormat::Webp);
    caps.shutdown_date = retires.map(String::from);
    caps.replacement = retires
        .filter(|_| model != AZURE_REPLACEMENT)
        .map(|_| AZURE_REPLACEMENT.to_string());
    caps.note = Some(note.map(String::from).unwrap_or_else(|| {
        "Azure: PNG or JPEG only, quality defaults to high, partial_images 1-3".into()
    }));
    caps
}

/// Azure's own entries, over the shared ones: its retirement schedule (ms.date 2026-07-07)
/// and output formats. GPT Image 2.5 and 2.6 are not in Microsoft's documentation; third
/// parties deploy them, so they keep OpenAI's rules without WEBP and with no Azure dates.
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    let unconfirmed =
        Some("not in Azure's documentation (unconfirmed there): OpenAI's rules, without WEBP");
    let mut entries = Vec::new();
    for (names, model, retires, note) in [
        (
            &["gpt-image-2", "gpt-image-2-*"][..],
            "gpt-image-2",
            Some("2027-04-21"),
            None,
        ),
        (
            &["gpt-image-1.5", "gpt-image-1.5-*"],
            "gpt-image-1.5",
            Some("2026-12-16"),
            None,
        ),
        (
            &["gpt-image-1-mini", "gpt-image-1-mini-*"],
            "gpt-image-1-mini",
            Some("2027-04-07"),
            None,
        ),
        (&["gpt-image-1"], "gpt-image-1", Some("2026-10-23"), None),
        (
            &[
                "gpt-image-2.5-flare",
                "gpt-image-2.5-flare-*",
                "gpt-image-2.5-sunburst",
                "gpt-image-2.5-sunburst-*",
            ],
            "gpt-image-2.5-flare",
            None,
            unconfirmed,
        ),
        (
            &[
                "gpt-image-2.6-flare",
                "gpt-image-2.6-flare-*",
                "gpt-image-2.6-sunburst",
                "gpt-image-2.6-sunburst-*",
            ],
            "gpt-image-2.6-flare",
            None,
            unconfirmed,
        ),
    ] {
        let caps = azure(model, retires, note);
        entries.extend(names.iter().map(|name| (*name, caps.clone())));
    }
    entries
}
