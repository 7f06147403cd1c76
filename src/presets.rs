//! Prompt presets (`[presets.NAME]`): a template the call's prompt is put into, default
//! options, and optionally a provider and model, chosen per call with `preset`.
//!
//! Nothing a preset does is silent: the result carries the prompt as given and as sent, the
//! preset's name, and a note saying how the prompt changed (see [`PresetConfig::note`]).
//! Which value wins where several are set is decided in two small functions,
//! [`preset_target`] and [`fill_layers`], so the order is written down once.

use imagegen_providers::{ImageFormat, ImageOptions, Param};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the call's prompt goes in a template.
pub const PLACEHOLDER: &str = "{prompt}";

/// The keys of a `[presets.NAME]` table besides the image options, for refusing unknown keys
/// by hand (the options are flattened in, where serde cannot refuse them).
pub const KEYS: [&str; 4] = ["template", "description", "provider", "model"];

/// One `[presets.NAME]` table: what a call naming it with `preset` gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PresetConfig {
    /// The prompt sent upstream, with every `{prompt}` replaced by the call's prompt (such as
    /// `"{prompt}, watercolor, soft light"`); other braces are kept as written.
    pub template: String,
    /// What the preset is for, shown by `list_providers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The provider or route a call naming none goes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model a call naming none gets (with the preset's provider, when it names one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Image options a call leaves unset (the keys `[defaults]` takes); they win over the
    /// provider's defaults and `[defaults]`.
    #[serde(flatten)]
    pub options: ImageOptions,
}

impl PresetConfig {
    /// The prompt to send: the template with every `{prompt}` replaced by `prompt`. The
    /// prompt itself is not searched, so a `{prompt}` inside it stays as the caller wrote it.
    pub fn expand(&self, prompt: &str) -> String {
        self.template.replace(PLACEHOLDER, prompt)
    }

    /// The note a result carries when preset `name` was applied: how the prompt changed and
    /// which options it set (`filled`), so that nothing it did is silent.
    pub fn note(&self, name: &str, prompt: &str, sent: &str, filled: &[Param]) -> String {
        let mut what = Vec::new();
        if sent != prompt {
            what.push(format!(
                "the prompt was sent as its template `{}` with the prompt given in place of {PLACEHOLDER}",
                self.template
            ));
        }
        if !filled.is_empty() {
            let names: Vec<String> = filled.iter().map(|p| format!("`{}`", key(*p))).collect();
            what.push(format!("it set {}", names.join(", ")));
        }
        if what.is_empty() {
            what.push("it changed nothing in this call".into());
        }
        format!("preset `{name}` applied: {}", what.join("; "))
    }
}

/// The option key of `param` as calls and configuration write it (`partial_images` for the
/// stream).
pub fn key(param: Param) -> &'static str {
    match param {
        Param::Stream => "partial_images",
        p => p.as_str(),
    }
}

/// The provider and model of a call with `preset`: the call's own when it names them, else
/// the preset's. The preset's model belongs to the preset's provider: a call naming another
/// provider does not get it (a preset naming no provider gives its model to any).
pub fn preset_target(
    provider: Option<&str>,
    model: Option<&str>,
    preset: &PresetConfig,
) -> (Option<String>, Option<String>) {
    let model_fits = match (provider, preset.provider.as_deref()) {
        (Some(asked), Some(own)) => asked == own,
        _ => true,
    };
    let model = model.or(preset.model.as_deref().filter(|_| model_fits));
    let provider = provider.or(preset.provider.as_deref());
    (provider.map(String::from), model.map(String::from))
}

/// What each layer filled into a call's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filled {
    /// The options the preset set.
    pub preset: Vec<Param>,
    /// The options the configured defaults set.
    pub defaults: Vec<Param>,
}

/// Fills `options` (the call's own values) from the layers under them, in order: the
/// preset's, then `defaults` (the provider's defaults over `[defaults]`, merged as
/// [`ProviderEntry::defaults`](crate::engine::ProviderEntry)). So the call's own values beat
/// the preset's, which beat the provider's defaults, which beat `[defaults]`.
///
/// `takes` says which options the model takes and the operation allows; the others are left
/// unset. The shape (`size` against `aspect_ratio` + `resolution`) fills as one, from the
/// highest layer that gives any of it. A streaming default (`partial_images`) applies only to
/// a call for one still image (a call that set it itself, even to 0, says so through `takes`).
pub fn fill_layers(
    options: &mut ImageOptions,
    preset: Option<&ImageOptions>,
    defaults: &ImageOptions,
    takes: impl Fn(Param) -> bool,
) -> Filled {
    let fill = |options: &mut ImageOptions, layer: &ImageOptions| {
        // Streaming makes one still image: a default never turns a call for several, or for
        // an animation, into an error; and an explicit `partial_images = 0` keeps it off.
        let streams_one = options.n() == 1
            && options.format() != ImageFormat::Gif
            && layer.partial_images.is_some_and(|n| n > 0);
        options.fill_from(layer, |param| {
            takes(param) && (param != Param::Stream || streams_one)
        })
    };
    let preset = preset.map(|p| fill(options, p)).unwrap_or_default();
    let defaults = fill(options, defaults);
    Filled { preset, defaults }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CliOverrides, ConfigError, LoadedConfig};

    fn load(toml: &str) -> Result<LoadedConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("imagegen.toml"), toml).unwrap();
        let env = [
            ("HOME", dir.path().to_str().unwrap()),
            ("XDG_DATA_HOME", dir.path().to_str().unwrap()),
        ];
        LoadedConfig::load_from(&CliOverrides::default(), env, dir.path())
    }

    fn refusal(toml: &str) -> String {
        load(&format!("[providers.mock]\n{toml}"))
            .expect_err(toml)
            .message()
            .to_string()
    }

    #[test]
    fn a_preset_reads_its_options_flat_as_defaults_takes_them() {
        let loaded = load(
            "[providers.mock]\n[presets.wc]\ntemplate = \"{prompt}, watercolor\"\n\
             description = \"soft\"\nprovider = \"mock\"\nmodel = \"mock-image-1\"\n\
             quality = \"high\"\nn = 2\noutput_compression = 80\nextra = { steps = 4 }\n",
        )
        .unwrap();
        let preset = &loaded.config.presets["wc"];
        assert_eq!(preset.template, "{prompt}, watercolor");
        assert_eq!(preset.description.as_deref(), Some("soft"));
        assert_eq!(
            (preset.provider.as_deref(), preset.model.as_deref()),
            (Some("mock"), Some("mock-image-1"))
        );
        assert_eq!(preset.options.quality.as_deref(), Some("high"));
        assert_eq!(
            (preset.options.n, preset.options.output_compression),
            (Some(2), Some(80))
        );
        assert_eq!(preset.options.extra.as_ref().unwrap()["steps"], 4);
    }

    #[test]
    fn a_preset_can_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("imagegen.toml"), "[providers.mock]\n").unwrap();
        let home = dir.path().to_str().unwrap();
        let env = [
            ("HOME", home),
            ("XDG_DATA_HOME", home),
            ("IMAGEGEN_PRESETS__WC__TEMPLATE", "{prompt}"),
            ("IMAGEGEN_PRESETS__WC__QUALITY", "high"),
        ];
        let loaded = LoadedConfig::load_from(&CliOverrides::default(), env, dir.path()).unwrap();
        let preset = &loaded.config.presets["wc"];
        assert_eq!(preset.template, "{prompt}", "a string, not an inline table");
        assert_eq!(preset.options.quality.as_deref(), Some("high"));
    }

    #[test]
    fn a_template_without_the_placeholder_is_refused_naming_the_preset() {
        for toml in [
            "[presets.oil]\ntemplate = \"oil painting\"\n",
            "[presets.oil]\ntemplate = \"{ prompt }, {Prompt}\"\n",
            "[presets.oil]\ntemplate = \"\"\n",
        ] {
            let message = refusal(toml);
            assert!(
                message.starts_with("`presets.oil.template` (from file ")
                    && message.contains("must contain {prompt}"),
                "{toml}: {message}"
            );
        }
        let message = refusal("[presets.oil]\nquality = \"high\"\n");
        assert!(
            message.starts_with("`presets.oil` (from file ")
                && message.contains("missing key `template`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_bad_values_and_unknown_providers_are_refused() {
        let message = refusal("[presets.oil]\ntemplate = \"{prompt}\"\nqualty = \"high\"\n");
        assert!(
            message.starts_with("`presets.oil.qualty` (from file ")
                && message
                    .contains("expected one of: template, description, provider, model, size"),
            "{message}"
        );
        let message = refusal("[presets.oil]\ntemplate = \"{prompt}\"\noutput_compression = 101\n");
        assert!(
            message.starts_with("`presets.oil.output_compression`")
                && message.contains("between 0 and 100"),
            "{message}"
        );
        let message = refusal("[presets.oil]\ntemplate = \"{prompt}\"\nn = \"two\"\n");
        assert!(message.contains("presets.oil"), "{message}");
        let message = refusal("[presets.oil]\ntemplate = \"{prompt}\"\nprovider = \"nope\"\n");
        assert!(
            message.starts_with("`presets.oil.provider`")
                && message.contains(
                    "names `nope`, which is no configured provider or route; configured: mock"
                ),
            "{message}"
        );
        let message = refusal("[presets]\noil = \"{prompt}, oil\"\n");
        assert!(message.contains("presets.oil"), "{message}");
        // A route is a provider as far as a call is concerned.
        load("[providers.mock]\n[routes.any]\nproviders = [\"mock\"]\n[presets.oil]\ntemplate = \"{prompt}\"\nprovider = \"any\"\n")
            .unwrap();
    }

    fn preset(template: &str) -> PresetConfig {
        PresetConfig {
            template: template.into(),
            ..PresetConfig::default()
        }
    }

    #[test]
    fn every_placeholder_is_replaced_and_other_braces_are_kept() {
        for (template, prompt, sent) in [
            (
                "{prompt}, watercolor, soft light",
                "a fox",
                "a fox, watercolor, soft light",
            ),
            ("{prompt}", "a fox", "a fox"),
            ("{prompt} / {prompt}", "a fox", "a fox / a fox"),
            ("{style} {prompt} {}", "a fox", "{style} a fox {}"),
            ("{{prompt}}", "a fox", "{a fox}"),
            ("say \"{prompt}\"", "{prompt}", "say \"{prompt}\""),
            ("{prompt}, ünïcödé ✓", "狐", "狐, ünïcödé ✓"),
        ] {
            assert_eq!(preset(template).expand(prompt), sent, "{template}");
        }
    }

    #[test]
    fn the_note_says_how_the_prompt_changed_and_what_was_set() {
        let p = preset("{prompt}, watercolor");
        let note = p.note(
            "wc",
            "a fox",
            "a fox, watercolor",
            &[Param::Quality, Param::Stream],
        );
        assert_eq!(
            note,
            "preset `wc` applied: the prompt was sent as its template `{prompt}, watercolor` with \
             the prompt given in place of {prompt}; it set `quality`, `partial_images`"
        );
        assert_eq!(
            preset("{prompt}").note("same", "a fox", "a fox", &[]),
            "preset `same` applied: it changed nothing in this call"
        );
    }

    #[test]
    fn the_preset_names_the_provider_and_model_only_when_the_call_does_not() {
        let both = PresetConfig {
            provider: Some("q".into()),
            model: Some("m".into()),
            ..preset("{prompt}")
        };
        let model_only = PresetConfig {
            model: Some("m".into()),
            ..preset("{prompt}")
        };
        let s = |v: Option<&str>| v.map(String::from);
        for (call, preset, want) in [
            ((None, None), &both, (Some("q"), Some("m"))),
            ((Some("q"), None), &both, (Some("q"), Some("m"))),
            ((Some("p"), None), &both, (Some("p"), None)),
            ((None, Some("c")), &both, (Some("q"), Some("c"))),
            ((Some("p"), Some("c")), &both, (Some("p"), Some("c"))),
            ((Some("p"), None), &model_only, (Some("p"), Some("m"))),
            ((None, None), &model_only, (None, Some("m"))),
            ((None, Some("c")), &model_only, (None, Some("c"))),
        ] {
            assert_eq!(
                preset_target(call.0, call.1, preset),
                (s(want.0), s(want.1)),
                "call {call:?}, preset {:?}/{:?}",
                preset.provider,
                preset.model
            );
        }
        // Applying it twice changes nothing: routed attempts apply it again.
        let (p, m) = preset_target(None, None, &both);
        assert_eq!(
            preset_target(p.as_deref(), m.as_deref(), &both),
            (s(Some("q")), s(Some("m")))
        );
    }

    fn opts(quality: Option<&str>, style: Option<&str>, size: Option<&str>) -> ImageOptions {
        let mut o = ImageOptions::default();
        o.quality = quality.map(String::from);
        o.style = style.map(String::from);
        o.size = size.map(String::from);
        o
    }

    /// The order: the call's own values > the preset's > the provider's defaults >
    /// `[defaults]`, one row per combination of layers that set `quality`.
    #[test]
    fn precedence_call_over_preset_over_provider_over_defaults() {
        let q = |v: &str| opts(Some(v), None, None);
        let none = ImageOptions::default();
        for (call, preset, provider, global, want, from) in [
            (
                &q("call"),
                Some(q("preset")),
                &q("prov"),
                &q("global"),
                Some("call"),
                "call",
            ),
            (
                &none,
                Some(q("preset")),
                &q("prov"),
                &q("global"),
                Some("preset"),
                "preset",
            ),
            (
                &none,
                None,
                &q("prov"),
                &q("global"),
                Some("prov"),
                "defaults",
            ),
            (
                &none,
                Some(none.clone()),
                &q("prov"),
                &q("global"),
                Some("prov"),
                "defaults",
            ),
            (&none, None, &none, &q("global"), Some("global"), "defaults"),
            (&q("call"), None, &none, &q("global"), Some("call"), "call"),
            (
                &none,
                Some(q("preset")),
                &none,
                &none,
                Some("preset"),
                "preset",
            ),
            (&none, None, &none, &none, None, "nowhere"),
        ] {
            let defaults = provider.clone().or(global);
            let mut options = call.clone();
            let filled = fill_layers(&mut options, preset.as_ref(), &defaults, |_| true);
            assert_eq!(
                options.quality.as_deref(),
                want,
                "{call:?} {preset:?} {provider:?} {global:?}"
            );
            let layer = match (
                filled.preset.contains(&Param::Quality),
                filled.defaults.contains(&Param::Quality),
            ) {
                (true, false) => "preset",
                (false, true) => "defaults",
                (false, false) if call.quality.is_some() => "call",
                (false, false) => "nowhere",
                (true, true) => "both",
            };
            assert_eq!(layer, from, "{call:?} {preset:?}");
        }
    }

    #[test]
    fn layers_fill_what_the_model_takes_and_the_shape_as_one() {
        let mut ratio = ImageOptions::default();
        ratio.aspect_ratio = Some("16:9".into());
        ratio.style = Some("vivid".into());
        let defaults = opts(Some("high"), None, Some("1024x1024"));
        let mut options = ImageOptions::default();
        let filled = fill_layers(&mut options, Some(&ratio), &defaults, |p| p != Param::Style);
        assert_eq!(options.aspect_ratio.as_deref(), Some("16:9"));
        assert_eq!(
            options.size, None,
            "the preset's ratio is the shape: no default size"
        );
        assert_eq!(options.style, None, "the model takes no style");
        assert_eq!(options.quality.as_deref(), Some("high"));
        assert_eq!(filled.preset, [Param::AspectRatio]);
        assert_eq!(filled.defaults, [Param::Quality]);

        // A call's own size keeps the preset's ratio out.
        let mut options = opts(None, None, Some("512x512"));
        let filled = fill_layers(&mut options, Some(&ratio), &defaults, |_| true);
        assert_eq!(options.aspect_ratio, None);
        assert_eq!(filled.preset, [Param::Style]);
    }

    #[test]
    fn a_streaming_preset_applies_to_one_still_image_only() {
        let mut stream = ImageOptions::default();
        stream.partial_images = Some(2);
        let none = ImageOptions::default();
        let mut one = ImageOptions::default();
        fill_layers(&mut one, Some(&stream), &none, |_| true);
        assert_eq!(one.partial_images, Some(2));
        let mut several = ImageOptions::default();
        several.n = Some(2);
        fill_layers(&mut several, Some(&stream), &none, |_| true);
        assert_eq!(several.partial_images, None);
        let mut off = ImageOptions::default();
        off.partial_images = Some(0);
        fill_layers(&mut off, Some(&stream), &stream, |_| true);
        assert_eq!(off.partial_images, Some(0), "the call's own 0 keeps it off");
    }
}
