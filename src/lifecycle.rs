//! Model aliases and lifecycles at call time, and what the upstream says about its models.
//!
//! The catalog knows each model's state, shutdown date and replacement; this module adds what
//! was learnt while running — shutdown dates a provider announces in its model listing, and
//! models a provider answered "does not exist" for — and keeps it across reloads, so the live
//! status shows it and later calls act on it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use imagegen_providers::{
    Catalog, Date, ImageProvider, Lifecycle, ModelCapabilities, ModelState, ProviderError,
    UpstreamModel,
};

use crate::engine::{Engine, ProviderEntry};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What running has taught about models: announced shutdown dates and models found missing.
///
/// One instance lives as long as the server, carried from engine to engine across reloads.
#[derive(Debug, Default)]
pub struct ModelWatch {
    inner: Mutex<Learnt>,
}

#[derive(Debug, Default)]
struct Learnt {
    /// Shutdown dates announced by a provider's model listing, by model.
    announced: BTreeMap<String, String>,
    /// Models a provider answered "does not exist" for, with what it said and when.
    missing: BTreeMap<String, String>,
    /// The last upstream check of each provider.
    checks: BTreeMap<String, UpstreamCheck>,
}

impl ModelWatch {
    fn learnt(&self) -> std::sync::MutexGuard<'_, Learnt> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shutdown date a provider announced for `model`, if any.
    pub fn announced(&self, model: &str) -> Option<String> {
        self.learnt().announced.get(model).cloned()
    }

    /// Records that a provider said `model` does not exist (`why`, for the status).
    pub fn mark_missing(&self, model: &str, why: String) {
        self.learnt().missing.insert(model.to_string(), why);
    }

    /// What a provider said when it answered that `model` does not exist, if it did.
    pub fn missing(&self, model: &str) -> Option<String> {
        self.learnt().missing.get(model).cloned()
    }

    /// Merges one provider's check: announced dates join the live catalog.
    pub fn record_check(&self, check: UpstreamCheck) {
        let mut learnt = self.learnt();
        for (model, date) in &check.announced {
            learnt.announced.insert(model.clone(), date.clone());
        }
        learnt.checks.insert(check.provider.clone(), check);
    }

    /// The last upstream check of every provider, by provider name.
    pub fn checks(&self) -> Vec<UpstreamCheck> {
        self.learnt().checks.values().cloned().collect()
    }
}

/// The catalog with what the server learnt applied, as of one day.
#[derive(Debug, Clone, Copy)]
pub struct LiveCatalog<'a> {
    /// The configured catalog.
    pub catalog: &'a Catalog,
    /// What running taught.
    pub watch: &'a ModelWatch,
    /// The day lifecycles are judged on.
    pub today: Date,
}

impl LiveCatalog<'_> {
    /// `model`'s capabilities with any announced shutdown date the catalog lacks.
    pub fn capabilities(&self, model: &str) -> ModelCapabilities {
        let mut caps = self.catalog.get(model);
        if caps.shutdown_date.is_none() {
            caps.shutdown_date = self.watch.announced(model);
        }
        caps
    }

    /// `model`'s lifecycle today.
    pub fn lifecycle(&self, model: &str) -> Lifecycle {
        self.capabilities(model).lifecycle(self.today)
    }

    /// Where `model`'s replacement chain ends today: the first model on it not shut down.
    pub fn replacement(&self, model: &str) -> Option<String> {
        let mut current = self.lifecycle(model).replacement?;
        for _ in 0..8 {
            let next = self.lifecycle(&current);
            if next.state != ModelState::ShutDown {
                return Some(current);
            }
            current = next.replacement?;
        }
        None
    }

    /// How `model` stands, for listings: state, shutdown date, replacement, and whether a
    /// provider said it is missing.
    pub fn standing(&self, model: &str) -> ModelStanding {
        let life = self.lifecycle(model);
        ModelStanding {
            state: life.state.as_str().into(),
            shutdown_date: life.shutdown_date.map(|d| d.to_string()),
            replacement: self.replacement(model).or(life.replacement),
            upstream_missing: self.watch.missing(model),
        }
    }

    /// A warning about `model` when it is deprecated or shut down (`what` says where it is
    /// named: "the default model of provider `openai`", "alias `fast` of provider `openai`").
    pub fn warning(&self, model: &str, what: &str) -> Option<String> {
        let life = self.lifecycle(model);
        let instead = self
            .replacement(model)
            .map(|r| format!("; use `{r}` instead"))
            .unwrap_or_default();
        match life.state {
            ModelState::Active => None,
            _ => Some(format!(
                "{what} is `{model}`, which is {}{instead}",
                life.describe(self.today)
            )),
        }
    }
}

/// A model's lifecycle as `list_providers`, the status and `models` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelStanding {
    /// `active`, `deprecated` or `shut_down`, today.
    pub state: String,
    /// The announced shutdown day (`YYYY-MM-DD`), from the catalog or the provider's listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_date: Option<String>,
    /// What to use instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// What a provider said when it answered that the model does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_missing: Option<String>,
}

/// The aliases of one provider: the provider's built-in ones overlaid with configured ones.
pub fn aliases(
    provider: &dyn ImageProvider,
    configured: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all: BTreeMap<String, String> = provider.aliases().into_iter().collect();
    all.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// What one provider's model listing says next to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpstreamCheck {
    /// The provider asked.
    pub provider: String,
    /// When it was asked (RFC 3339, UTC).
    pub at: String,
    /// Models the provider advertises that the catalog thinks active but the listing lacks.
    pub missing: Vec<String>,
    /// Shutdown dates the listing announces that the catalog lacks (or has otherwise), by model.
    pub announced: BTreeMap<String, String>,
    /// Image models the listing has that the catalog does not know.
    pub unknown: Vec<String>,
    /// How many image models the listing has.
    pub listed: usize,
}

impl UpstreamCheck {
    /// Compares `listed` (the provider's image models) with the catalog and with `advertised`
    /// (the models the provider offers, which the listing should hold while active).
    pub fn compare(
        provider: &str,
        listed: &[UpstreamModel],
        advertised: &[String],
        live: &LiveCatalog<'_>,
        at: String,
    ) -> Self {
        let missing = advertised
            .iter()
            .filter(|m| live.lifecycle(m).state != ModelState::ShutDown)
            .filter(|m| !listed.iter().any(|l| &l.id == *m))
            .cloned()
            .collect();
        let announced = listed
            .iter()
            .filter_map(|l| {
                let date = Date::parse(l.shutdown_date.as_deref()?).ok()?.to_string();
                let known = live.catalog.get(&l.id).shutdown_date;
                (known.as_deref() != Some(date.as_str())).then(|| (l.id.clone(), date))
            })
            .collect();
        let unknown = listed
            .iter()
            .filter(|l| !live.catalog.get(&l.id).known)
            .map(|l| l.id.clone())
            .collect();
        Self {
            provider: provider.to_string(),
            at,
            missing,
            announced,
            unknown,
            listed: listed.len(),
        }
    }

    /// The findings as lines for people; empty when the listing and the catalog agree.
    pub fn findings(&self) -> Vec<String> {
        let p = &self.provider;
        let mut out = Vec::new();
        for model in &self.missing {
            out.push(format!(
                "provider `{p}` no longer lists `{model}`, which the catalog thinks active: it may be retired"
            ));
        }
        for (model, date) in &self.announced {
            out.push(format!(
                "provider `{p}` announces that `{model}` shuts down on {date}; the catalog did not know"
            ));
        }
        for model in &self.unknown {
            out.push(format!(
                "provider `{p}` serves `{model}`, which the catalog does not know; add it under [models.\"{model}\"] to check calls against its rules"
            ));
        }
        out
    }
}

/// A shared handle, as engines hold it.
pub type SharedWatch = Arc<ModelWatch>;

/// One catalog model as `imagegen-mcp models` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRow {
    /// The model name (`*` ends a name that covers a family's snapshots).
    pub model: String,
    /// Its lifecycle today.
    #[serde(flatten)]
    pub standing: ModelStanding,
    /// Aliases that name it, as `provider:alias`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The catalog as rows: every entry, or (with `provider`) the models that provider offers,
/// its default and its aliases' targets.
///
/// Each row's standing is the one provider's (with `provider`); else the shared catalog's,
/// or for a model only a provider kind knows (the mock's), that provider's.
pub fn model_rows(engine: &Engine, provider: Option<&str>) -> Vec<ModelRow> {
    let shared = engine.live_catalog();
    let entries: Vec<(&String, &ProviderEntry)> = engine
        .providers()
        .iter()
        .filter(|(name, _)| provider.is_none_or(|p| p == name.as_str()))
        .collect();
    let mut names: Vec<String> = match provider {
        None => shared
            .catalog
            .entries()
            .chain(entries.iter().flat_map(|(_, e)| e.catalog.entries()))
            .map(|(n, _)| n.to_string())
            .collect(),
        Some(_) => entries
            .iter()
            .flat_map(|(_, e)| {
                let mut models = e.offered_models();
                models.extend(e.aliases.values().cloned());
                models
            })
            .collect(),
    };
    names.sort();
    names.dedup();
    let standing = |model: &str| {
        let own = entries.iter().find(|(_, e)| {
            provider.is_some() || (!shared.catalog.get(model).known && e.catalog.get(model).known)
        });
        match own {
            Some((_, e)) => engine.live_catalog_of(e).standing(model),
            None => shared.standing(model),
        }
    };
    names
        .into_iter()
        .map(|model| ModelRow {
            standing: standing(&model),
            aliases: entries
                .iter()
                .flat_map(|(name, e)| {
                    e.aliases
                        .iter()
                        .filter(|(_, target)| **target == model)
                        .map(move |(alias, _)| format!("{name}:{alias}"))
                })
                .collect(),
            model,
        })
        .collect()
}

/// Asks each provider (or only `provider`) that can list its models which image models it
/// serves, compares the answers with the catalog and records them in the engine's watch.
///
/// With `keyed_only`, providers without an API key are skipped (the background check must
/// not knock on servers anonymously). Failures come back beside the checks, by provider.
pub async fn check_upstream(
    engine: &Engine,
    provider: Option<&str>,
    keyed_only: bool,
) -> (Vec<UpstreamCheck>, Vec<(String, ProviderError)>) {
    let (mut checks, mut failures) = (Vec::new(), Vec::new());
    for (name, entry) in engine.providers() {
        if provider.is_some_and(|p| p != name) {
            continue;
        }
        if keyed_only && entry.keys.as_ref().is_none_or(|k| k.is_empty()) {
            continue;
        }
        match entry.provider.list_models().await {
            Ok(listed) => {
                let advertised = entry.offered_models();
                let at = crate::clock::now_rfc3339();
                let check = UpstreamCheck::compare(
                    name,
                    &listed,
                    &advertised,
                    &engine.live_catalog_of(entry),
                    at,
                );
                engine.watch().record_check(check.clone());
                checks.push(check);
            }
            Err(e) => failures.push((name.clone(), e)),
        }
    }
    (checks, failures)
}

/// Runs [`check_upstream`] on the live engine at start-up and every
/// `[catalog] check_interval_h` hours while `[catalog] check_upstream` is on. It never blocks
/// anything: findings are logged, failures only at debug level.
pub async fn watch_upstream(live: Arc<crate::live::Live>) {
    loop {
        let engine = live.engine();
        let catalog = live.snapshot().loaded.config.catalog;
        if catalog.check_upstream {
            let (checks, failures) = check_upstream(&engine, None, true).await;
            for check in &checks {
                let findings = check.findings();
                if findings.is_empty() {
                    tracing::debug!(provider = %check.provider, listed = check.listed, "the provider's model listing agrees with the catalog");
                }
                for finding in findings {
                    tracing::warn!("{finding}");
                }
            }
            for (provider, e) in failures {
                tracing::debug!(%provider, "upstream model check failed: {e}");
            }
        }
        drop(engine);
        let hours = catalog.check_interval_h.max(1);
        tokio::time::sleep(std::time::Duration::from_secs(hours.saturating_mul(3600))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live<'a>(catalog: &'a Catalog, watch: &'a ModelWatch, today: &str) -> LiveCatalog<'a> {
        LiveCatalog {
            catalog,
            watch,
            today: Date::parse(today).unwrap(),
        }
    }

    #[test]
    fn shutdown_dates_decide_the_state_and_announced_ones_join_the_catalog() {
        let catalog = Catalog::builtin();
        let watch = ModelWatch::default();
        let before = live(&catalog, &watch, "2026-11-30");
        assert_eq!(
            before.lifecycle("gpt-image-1.5").state,
            ModelState::Deprecated
        );
        let today = live(&catalog, &watch, "2026-12-01");
        assert_eq!(today.lifecycle("gpt-image-1.5").state, ModelState::ShutDown);
        assert_eq!(
            today.replacement("gpt-image-1.5").as_deref(),
            Some("gpt-image-2.6-flare")
        );
        assert_eq!(today.lifecycle("gpt-image-2").state, ModelState::Active);
        assert_eq!(today.warning("gpt-image-2", "x"), None);

        let listed = vec![
            UpstreamModel::new("gpt-image-2", Some("2027-03-01".into())),
            UpstreamModel::new("gpt-image-2.6-flare", None),
            UpstreamModel::new("gpt-image-3-preview", None),
        ];
        let advertised = vec!["gpt-image-2".to_string(), "gpt-image-2.5-flare".to_string()];
        let check = UpstreamCheck::compare("openai", &listed, &advertised, &today, "t".into());
        assert_eq!(check.missing, vec!["gpt-image-2.5-flare"]);
        assert_eq!(check.announced["gpt-image-2"], "2027-03-01");
        assert_eq!(check.unknown, vec!["gpt-image-3-preview"]);
        assert_eq!(check.findings().len(), 3);
        watch.record_check(check);
        let life = today.lifecycle("gpt-image-2");
        assert_eq!(life.state, ModelState::Deprecated);
        let warning = today.warning("gpt-image-2", "the default model").unwrap();
        assert!(
            warning.contains("shuts down on 2027-03-01 (in 90 days)"),
            "{warning}"
        );
        assert_eq!(
            live(&catalog, &watch, "2027-03-01")
                .lifecycle("gpt-image-2")
                .state,
            ModelState::ShutDown
        );
    }
}
