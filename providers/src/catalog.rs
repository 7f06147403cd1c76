//! Model capabilities as data: a built-in catalog that configuration can extend or override.
//!
//! OpenAI ships image models several times a year; a new model must be a config change, not
//! a release. Names ending in `*` match every model with that prefix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ImageFormat;

/// A request parameter a model may or may not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Param {
    /// `size`.
    Size,
    /// `quality`.
    Quality,
    /// `n` above 1.
    N,
    /// `output_format`.
    OutputFormat,
    /// `output_compression`.
    OutputCompression,
    /// `background`.
    Background,
    /// `style`.
    Style,
    /// `moderation`.
    Moderation,
    /// `seed`.
    Seed,
    /// `response_format` (legacy DALL·E models only; GPT models reject it).
    ResponseFormat,
    /// `stream` and `partial_images`.
    Stream,
    /// `input_fidelity` on edits.
    InputFidelity,
}

impl Param {
    /// The parameter's name on the wire and in tool calls.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Quality => "quality",
            Self::N => "n",
            Self::OutputFormat => "output_format",
            Self::OutputCompression => "output_compression",
            Self::Background => "background",
            Self::Style => "style",
            Self::Moderation => "moderation",
            Self::Seed => "seed",
            Self::ResponseFormat => "response_format",
            Self::Stream => "stream",
            Self::InputFidelity => "input_fidelity",
        }
    }
}

/// Rules for free-form `WxH` sizes (gpt-image-2 and later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeRule {
    /// Both sides must be multiples of this.
    pub multiple_of: u32,
    /// The shortest allowed side.
    pub min_side: u32,
    /// The longest allowed side.
    pub max_side: u32,
    /// The largest allowed long-side / short-side ratio.
    pub max_ratio: f64,
    /// The fewest pixels in all.
    pub min_pixels: u64,
    /// The most pixels in all.
    pub max_pixels: u64,
}

impl SizeRule {
    /// The rule that always holds: any positive size up to 16384 a side.
    pub fn any() -> Self {
        Self {
            multiple_of: 1,
            min_side: 1,
            max_side: 16384,
            max_ratio: f64::INFINITY,
            min_pixels: 1,
            max_pixels: u64::MAX,
        }
    }

    /// Why `width`x`height` breaks this rule, or `None` when it fits.
    pub fn violation(&self, width: u32, height: u32) -> Option<String> {
        let (long, short) = (width.max(height), width.min(height));
        let pixels = u64::from(width) * u64::from(height);
        if self.multiple_of > 1 && (width % self.multiple_of != 0 || height % self.multiple_of != 0)
        {
            Some(format!(
                "both sides must be multiples of {}",
                self.multiple_of
            ))
        } else if short < self.min_side || long > self.max_side {
            Some(format!(
                "each side must be between {} and {} pixels",
                self.min_side, self.max_side
            ))
        } else if f64::from(long) > f64::from(short) * self.max_ratio {
            Some(format!(
                "the long side may be at most {} times the short side",
                self.max_ratio
            ))
        } else if pixels < self.min_pixels || pixels > self.max_pixels {
            Some(format!(
                "the total pixel count must be between {} and {}",
                self.min_pixels, self.max_pixels
            ))
        } else {
            None
        }
    }
}

/// What one model can do, used to check requests before any paid call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelCapabilities {
    /// Fixed sizes accepted as written (`1024x1024`, `auto`, ...).
    pub sizes: Vec<String>,
    /// Free-form `WxH` sizes accepted under these rules, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_sizes: Option<SizeRule>,
    /// Accepted `quality` values; empty means any.
    pub qualities: Vec<String>,
    /// Accepted `style` values; empty means any.
    pub styles: Vec<String>,
    /// The most images one request may ask for.
    pub max_n: u32,
    /// Formats the model can return.
    pub formats: Vec<ImageFormat>,
    /// The longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Whether the model can edit images.
    pub edit: bool,
    /// The most input images one edit may send (the first is the one edited).
    #[serde(default = "default_max_edit_images")]
    pub max_edit_images: u32,
    /// Whether the model can make variations of an image.
    pub variations: bool,
    /// The optional parameters the model takes.
    pub params: Vec<Param>,
    /// Whether this entry came from a catalog (false: a guess for an unknown model).
    #[serde(default)]
    pub known: bool,
    /// A remark shown to users (retired, preview, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ModelCapabilities {
    /// Whether the model takes `param`.
    pub fn takes(&self, param: Param) -> bool {
        self.params.contains(&param)
    }

    /// Only the checks that always hold, for a model no catalog knows.
    pub fn unknown() -> Self {
        Self {
            sizes: vec!["auto".into()],
            custom_sizes: Some(SizeRule::any()),
            qualities: Vec::new(),
            styles: Vec::new(),
            max_n: 10,
            formats: ImageFormat::ALL.to_vec(),
            max_prompt_chars: 32_000,
            edit: true,
            max_edit_images: 16,
            variations: false,
            params: gpt_params(),
            known: false,
            note: Some("not in the model catalog: only basic checks apply".into()),
        }
    }

    /// Applies the fields an override sets.
    pub fn apply(&mut self, o: &ModelOverride) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &o.$field { self.$field = v.clone(); }
            )*};
        }
        set!(
            sizes,
            qualities,
            styles,
            max_n,
            formats,
            max_prompt_chars,
            edit,
            max_edit_images,
            variations,
            params
        );
        if o.custom_sizes.is_some() {
            self.custom_sizes = o.custom_sizes.clone();
        }
        if o.note.is_some() {
            self.note = o.note.clone();
        }
        self.known = true;
    }
}

/// A configuration entry that adds a model or changes a built-in one; unset fields are inherited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelOverride {
    /// A catalog model to start from (default: the entry of the same name, else an unknown model).
    pub like: Option<String>,
    /// See [`ModelCapabilities::sizes`].
    pub sizes: Option<Vec<String>>,
    /// See [`ModelCapabilities::custom_sizes`].
    pub custom_sizes: Option<SizeRule>,
    /// See [`ModelCapabilities::qualities`].
    pub qualities: Option<Vec<String>>,
    /// See [`ModelCapabilities::styles`].
    pub styles: Option<Vec<String>>,
    /// See [`ModelCapabilities::max_n`].
    pub max_n: Option<u32>,
    /// See [`ModelCapabilities::formats`].
    pub formats: Option<Vec<ImageFormat>>,
    /// See [`ModelCapabilities::max_prompt_chars`].
    pub max_prompt_chars: Option<usize>,
    /// See [`ModelCapabilities::edit`].
    pub edit: Option<bool>,
    /// See [`ModelCapabilities::max_edit_images`].
    pub max_edit_images: Option<u32>,
    /// See [`ModelCapabilities::variations`].
    pub variations: Option<bool>,
    /// See [`ModelCapabilities::params`].
    pub params: Option<Vec<Param>>,
    /// See [`ModelCapabilities::note`].
    pub note: Option<String>,
}

/// Model names mapped to their capabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    models: BTreeMap<String, ModelCapabilities>,
}

/// GPT image models take up to 16 input images; the default for entries written before the field.
fn default_max_edit_images() -> u32 {
    16
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn gpt_params() -> Vec<Param> {
    use Param::*;
    vec![
        Size,
        Quality,
        N,
        OutputFormat,
        OutputCompression,
        Background,
        Moderation,
        Stream,
        InputFidelity,
    ]
}

fn gpt_image_1() -> ModelCapabilities {
    ModelCapabilities {
        sizes: strings(&["1024x1024", "1536x1024", "1024x1536", "auto"]),
        custom_sizes: None,
        qualities: strings(&["low", "medium", "high", "auto"]),
        styles: Vec::new(),
        max_n: 10,
        formats: ImageFormat::ALL.to_vec(),
        max_prompt_chars: 32_000,
        edit: true,
        max_edit_images: 16,
        variations: false,
        params: gpt_params(),
        known: true,
        note: None,
    }
}

fn gpt_image_2() -> ModelCapabilities {
    ModelCapabilities {
        sizes: strings(&["1024x1024", "1536x1024", "1024x1536", "auto"]),
        custom_sizes: Some(SizeRule {
            multiple_of: 16,
            min_side: 16,
            max_side: 3840,
            max_ratio: 3.0,
            min_pixels: 655_360,
            max_pixels: 8_294_400,
        }),
        ..gpt_image_1()
    }
}

impl Catalog {
    /// The models this crate knows about, as of late 2026.
    pub fn builtin() -> Self {
        let mut models = BTreeMap::new();
        let mini_params: Vec<Param> = gpt_params()
            .into_iter()
            .filter(|p| *p != Param::InputFidelity)
            .collect();
        models.insert("gpt-image-1.5".into(), gpt_image_1());
        models.insert(
            "gpt-image-1-mini".into(),
            ModelCapabilities {
                params: mini_params,
                ..gpt_image_1()
            },
        );
        models.insert(
            "gpt-image-1".into(),
            ModelCapabilities {
                note: Some("shut down by OpenAI on 2026-10-23".into()),
                ..gpt_image_1()
            },
        );
        models.insert("gpt-image-2".into(), gpt_image_2());
        for name in ["gpt-image-2.5-*", "gpt-image-2.6-*"] {
            models.insert(
                name.into(),
                ModelCapabilities {
                    qualities: strings(&["low", "medium", "high", "xhigh", "max", "auto"]),
                    ..gpt_image_2()
                },
            );
        }
        models.insert(
            "dall-e-3".into(),
            ModelCapabilities {
                sizes: strings(&["1024x1024", "1792x1024", "1024x1792"]),
                custom_sizes: None,
                qualities: strings(&["standard", "hd"]),
                styles: strings(&["vivid", "natural"]),
                max_n: 1,
                formats: vec![ImageFormat::Png],
                max_prompt_chars: 4_000,
                edit: false,
                max_edit_images: 1,
                variations: false,
                params: vec![
                    Param::Size,
                    Param::Quality,
                    Param::Style,
                    Param::ResponseFormat,
                ],
                known: true,
                note: Some(
                    "retired by OpenAI on 2026-05-12; still served by compatible servers".into(),
                ),
            },
        );
        models.insert(
            "dall-e-2".into(),
            ModelCapabilities {
                sizes: strings(&["256x256", "512x512", "1024x1024"]),
                custom_sizes: None,
                qualities: strings(&["standard"]),
                styles: Vec::new(),
                max_n: 10,
                formats: vec![ImageFormat::Png],
                max_prompt_chars: 1_000,
                edit: true,
                // dall-e-2 edits one square PNG and takes it as `image`, not `image[]`.
                max_edit_images: 1,
                variations: true,
                params: vec![Param::Size, Param::Quality, Param::N, Param::ResponseFormat],
                known: true,
                note: Some(
                    "retired by OpenAI on 2026-05-12; still served by compatible servers".into(),
                ),
            },
        );
        models.insert(
            crate::mock::MOCK_MODEL.into(),
            ModelCapabilities {
                sizes: strings(&["1024x1024", "1536x1024", "1024x1536", "auto"]),
                custom_sizes: Some(SizeRule {
                    multiple_of: 1,
                    min_side: 16,
                    max_side: 4096,
                    max_ratio: 8.0,
                    min_pixels: 256,
                    max_pixels: 16_777_216,
                }),
                qualities: strings(&["low", "medium", "high", "auto"]),
                styles: Vec::new(),
                max_n: 10,
                formats: ImageFormat::ALL.to_vec(),
                max_prompt_chars: 32_000,
                edit: true,
                max_edit_images: 16,
                variations: true,
                params: {
                    let mut p = gpt_params();
                    p.push(Param::Seed);
                    p
                },
                known: true,
                note: Some("offline procedural images for tests and demos".into()),
            },
        );
        Self { models }
    }

    /// Applies configuration entries on top of this catalog, in name order.
    ///
    /// An entry for an existing name changes only the fields it sets; a new name starts from
    /// `like` (or an unknown model) and must then be complete enough to be useful.
    pub fn extend<'a>(
        &mut self,
        overrides: impl IntoIterator<Item = (&'a String, &'a ModelOverride)>,
    ) -> Result<(), String> {
        for (name, o) in overrides {
            let mut caps = match &o.like {
                Some(base) => self.lookup(base).cloned().ok_or_else(|| {
                    format!(
                        "models.\"{name}\".like names `{base}`, which the catalog does not know"
                    )
                })?,
                None => self
                    .lookup(name)
                    .cloned()
                    .unwrap_or_else(ModelCapabilities::unknown),
            };
            caps.apply(o);
            self.models.insert(name.clone(), caps);
        }
        Ok(())
    }

    fn lookup(&self, model: &str) -> Option<&ModelCapabilities> {
        if let Some(caps) = self.models.get(model) {
            return Some(caps);
        }
        self.models
            .iter()
            .filter_map(|(name, caps)| {
                let prefix = name.strip_suffix('*')?;
                model.starts_with(prefix).then_some((prefix.len(), caps))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, caps)| caps)
    }

    /// The capabilities of `model`: its entry, the longest matching `prefix*` entry, or the
    /// basic checks for an unknown model.
    pub fn get(&self, model: &str) -> ModelCapabilities {
        self.lookup(model)
            .cloned()
            .unwrap_or_else(ModelCapabilities::unknown)
    }

    /// The names of the entries that can make variations, for messages naming the alternatives.
    pub fn variation_models(&self) -> Vec<String> {
        self.entries()
            .filter(|(_, caps)| caps.variations)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Every catalog entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &ModelCapabilities)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_entries_match_new_point_releases() {
        let catalog = Catalog::builtin();
        let caps = catalog.get("gpt-image-2.5-flare");
        assert!(caps.known);
        assert!(caps.qualities.contains(&"xhigh".to_string()));
        assert!(!catalog.get("gpt-image-9").known);
    }

    #[test]
    fn overrides_change_only_what_they_set_and_new_models_inherit_from_like() {
        let mut catalog = Catalog::builtin();
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "dall-e-3".to_string(),
            ModelOverride {
                max_n: Some(4),
                ..Default::default()
            },
        );
        overrides.insert(
            "gpt-image-3".to_string(),
            ModelOverride {
                like: Some("gpt-image-2".into()),
                max_prompt_chars: Some(64_000),
                ..Default::default()
            },
        );
        catalog.extend(&overrides).unwrap();
        let dalle = catalog.get("dall-e-3");
        assert_eq!(dalle.max_n, 4);
        assert_eq!(dalle.styles, vec!["vivid", "natural"]);
        let next = catalog.get("gpt-image-3");
        assert!(next.known);
        assert_eq!(next.max_prompt_chars, 64_000);
        assert_eq!(next.custom_sizes, catalog.get("gpt-image-2").custom_sizes);
    }

    #[test]
    fn edit_limits_and_variation_support_are_data() {
        let mut catalog = Catalog::builtin();
        assert_eq!(catalog.get("gpt-image-1.5").max_edit_images, 16);
        assert_eq!(catalog.get("dall-e-2").max_edit_images, 1);
        assert_eq!(
            catalog.variation_models(),
            vec!["dall-e-2".to_string(), crate::mock::MOCK_MODEL.to_string()]
        );
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "local-sd".to_string(),
            ModelOverride {
                like: Some("dall-e-2".into()),
                max_edit_images: Some(4),
                ..Default::default()
            },
        );
        catalog.extend(&overrides).unwrap();
        let local = catalog.get("local-sd");
        assert_eq!((local.max_edit_images, local.variations), (4, true));
        // Entries serialised before the field existed still read, with the GPT default.
        let mut json = serde_json::to_value(catalog.get("gpt-image-2")).unwrap();
        json.as_object_mut().unwrap().remove("max_edit_images");
        let caps: ModelCapabilities = serde_json::from_value(json).unwrap();
        assert_eq!(caps.max_edit_images, 16);
    }

    #[test]
    fn like_must_name_a_known_model() {
        let mut catalog = Catalog::builtin();
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "x".to_string(),
            ModelOverride {
                like: Some("nope".into()),
                ..Default::default()
            },
        );
        let err = catalog.extend(&overrides).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn size_rule_names_the_broken_constraint() {
        let rule = Catalog::builtin().get("gpt-image-2").custom_sizes.unwrap();
        assert_eq!(rule.violation(2048, 1152), None);
        assert!(rule
            .violation(1000, 1000)
            .unwrap()
            .contains("multiples of 16"));
        assert!(rule.violation(3840, 1024).unwrap().contains("times"));
        assert!(rule.violation(4096, 2048).unwrap().contains("between"));
        assert!(rule.violation(512, 512).unwrap().contains("pixel count"));
    }
}
