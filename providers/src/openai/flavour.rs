//! What the OpenAI-shaped kinds (`openai`, `azure_openai`, `openai_compatible`) do their own
//! way on the one engine: where the routes are, how the credential travels, which extra
//! headers go along, what an unknown model is sent, and how their error answers read.
//!
//! A flavour is plain data (and one function for errors) built by each kind's module, so the
//! engine's request building, body scanning, streaming and downloads stay one code path.

use std::{collections::BTreeMap, fmt, sync::Arc};

use reqwest::header::HeaderMap;

use crate::{http::token::Tokens, keys::PoolKey, ModelCapabilities, Param, ProviderError};

/// How a pool key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyHeader {
    /// `Authorization: Bearer <key>` (OpenAI and most compatible servers).
    Bearer,
    /// `api-key: <key>` (Azure).
    ApiKey,
}

/// Where the edits of a model go.
#[derive(Debug, Clone)]
pub(crate) enum EditRoute {
    /// One URL for every model (the model travels in the form).
    Fixed(url::Url),
    /// `{base}/{deployment}/images/edits?api-version=...`: Azure's deployment-scoped path,
    /// where the deployment is the model the call names.
    PerDeployment {
        /// `{endpoint}/openai/deployments`.
        base: url::Url,
        /// The `api-version` query value; empty sends none.
        api_version: String,
    },
}

/// The routes of a flavour whose paths are not `{base_url}/images/...`.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    /// Generations.
    pub(crate) generations: url::Url,
    /// Edits.
    pub(crate) edits: EditRoute,
    /// Variations.
    pub(crate) variations: url::Url,
}

/// What an error refiner is told besides the error `parse_error` made.
#[derive(Debug)]
pub(crate) struct ErrorContext<'a> {
    /// The HTTP status (200 for an error object inside a successful answer).
    pub(crate) status: u16,
    /// The error body (capped), for reading the flavour's own fields.
    pub(crate) body: &'a [u8],
    /// The key the request was sent with, if any.
    pub(crate) key: Option<&'a PoolKey>,
    /// Whether a bearer token (not a key) was sent.
    pub(crate) token: bool,
    /// The model the request named.
    pub(crate) model: Option<&'a str>,
}

/// Rewrites an error the OpenAI table classified, for a flavour whose answers differ.
pub(crate) type ErrorRefiner = fn(ProviderError, &ErrorContext<'_>) -> ProviderError;

/// One OpenAI-shaped kind's differences from OpenAI itself.
pub(crate) struct Flavour {
    /// The `kind` string, in results and errors.
    pub(crate) kind: &'static str,
    /// The routes; `None`: `{base_url}/images/{generations,edits,variations}`.
    pub(crate) routes: Option<Routes>,
    /// How a key is sent.
    pub(crate) key_header: KeyHeader,
    /// Bearer tokens sent instead of keys (Entra ID); a 401 refreshes the token once.
    pub(crate) tokens: Option<Arc<Tokens>>,
    /// Extra headers of every request, marked sensitive (their values may be secrets).
    pub(crate) headers: HeaderMap,
    /// Whether a model no catalog entry describes gets only prompt, `n` and size: compatible
    /// servers refuse parameters they do not know.
    pub(crate) basic_unknown: bool,
    /// Names whose rules are another model's (an Azure deployment → the model it serves),
    /// used when the catalog has no entry of the name itself.
    pub(crate) rules_of: BTreeMap<String, String>,
    /// The flavour's own reading of error answers, after OpenAI's table.
    pub(crate) refine_error: Option<ErrorRefiner>,
    /// Whether OpenAI's built-in aliases (`fast`, `best`) apply.
    pub(crate) aliases: bool,
    /// Whether `GET {base_url}/models` lists the image models.
    pub(crate) lists_models: bool,
    /// Whether `POST {base_url}/moderations` is OpenAI's moderation endpoint.
    pub(crate) moderates: bool,
    /// Whether `partial_images = 0` still streams (Azure takes 1-3 only: 0 is sent as no stream).
    pub(crate) streams_zero_partials: bool,
    /// Whether a 200 answer holding an `error` object and no images is read as that error.
    pub(crate) reads_error_in_200: bool,
    /// A sentence added to a failed download's message.
    pub(crate) download_hint: &'static str,
}

impl fmt::Debug for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: their values may be secrets.
        let headers: Vec<&str> = self.headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("Flavour")
            .field("kind", &self.kind)
            .field("key_header", &self.key_header)
            .field("tokens", &self.tokens)
            .field("headers", &headers)
            .field("basic_unknown", &self.basic_unknown)
            .field("rules_of", &self.rules_of)
            .finish_non_exhaustive()
    }
}

impl Flavour {
    /// OpenAI's own API.
    pub(crate) fn openai() -> Self {
        Self {
            kind: "openai",
            routes: None,
            key_header: KeyHeader::Bearer,
            tokens: None,
            headers: HeaderMap::new(),
            basic_unknown: false,
            rules_of: BTreeMap::new(),
            refine_error: None,
            aliases: true,
            lists_models: true,
            moderates: true,
            streams_zero_partials: true,
            reads_error_in_200: false,
            download_hint: "result URLs expire 60 minutes after generation",
        }
    }

    /// `caps` as this flavour applies them to a model: an unknown model on a compatible
    /// server takes only `size` (prompt and `n` always go), until configuration declares more.
    pub(crate) fn rules(&self, caps: ModelCapabilities) -> ModelCapabilities {
        if caps.known || !self.basic_unknown {
            return caps;
        }
        ModelCapabilities {
            params: vec![Param::Size, Param::N],
            note: Some(
                "not in the model catalog: only prompt, n and size are sent; declare what else it \
                 takes under [providers.NAME.models.\"MODEL\"]"
                    .into(),
            ),
            ..caps
        }
    }
}
