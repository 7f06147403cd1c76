//! Servers that speak OpenAI's image routes (`kind = "openai_compatible"`): LiteLLM's proxy,
//! LocalAI, OpenRouter's images route, vLLM-style servers; on the OpenAI engine.
//!
//! `POST {base_url}/images/generations` (`/images/edits`, `/images/variations`) with a bearer
//! key when one is configured (LocalAI needs none) and the configured extra `headers`
//! (OpenRouter's `X-Title`, a gateway's tenant header), whose values are treated as secrets:
//! sensitive on the wire, never in `Debug`, logs or errors. Answers may hold `url` or
//! `b64_json` images (URLs are fetched from the base URL's origin and `download_hosts` only)
//! and may leave out `created`, `usage` and `revised_prompt`. Only the parameters the model's
//! catalog entry declares are sent, because such servers refuse what they do not know: a
//! model no entry describes gets prompt, `n` and `size`, until
//! `[providers.NAME.models."x"]` declares more. The catalog's shutdown dates are OpenAI's, so
//! they are not acted on unless `catalog_dates_apply = true` (a gateway passing calls to
//! OpenAI unchanged).
//!
//! Existing `kind = "openai"` providers with a custom `base_url` are untouched by this kind.

mod config;

pub use config::Config;

use crate::ModelCapabilities;

/// The model used when the configuration names none: the name LiteLLM and OpenRouter give
/// OpenAI's current GA model. Set `model` for a server that names its models otherwise.
pub const DEFAULT_MODEL: &str = "gpt-image-2";

/// This kind's own catalog entries: none, since a compatible server serves the OpenAI
/// families under their names (the shared entries) and anything else is the server's own,
/// declared per provider under `[providers.NAME.models."x"]`.
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    Vec::new()
}

/// A 401 with no key configured says where this kind's key goes (OpenAI's wording names
/// `OPENAI_API_KEY`, which this kind does not read).
fn refine(
    mut err: crate::ProviderError,
    cx: &crate::openai::flavour::ErrorContext<'_>,
) -> crate::ProviderError {
    if cx.status == 401 && cx.key.is_none() {
        err.message = "the server requires an API key and none is set (HTTP 401); set api_key \
                       or api_key_file under this provider"
            .into();
    }
    err
}
