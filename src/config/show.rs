//! `imagegen-mcp config show`: the effective configuration with each value's source.

use std::fmt::Write as _;

use figment::value::{Dict, Num, Value};

use super::{
    error::{dotted, quote_key},
    load::TOP_KEYS,
    LoadedConfig,
};

impl LoadedConfig {
    /// The effective configuration as TOML, each value followed by its source (`# default`,
    /// `# file ...`, `# env ...`, `# flag ...`); API keys appear only as fingerprints, each
    /// with its source (`api_key` for one key, `api_keys` for a pool).
    pub fn show(&self) -> String {
        let mut out = String::from("# imagegen-mcp effective configuration\n");
        match &self.file {
            Some(file) => writeln!(out, "# config file: {}", file.display()),
            None => writeln!(
                out,
                "# config file: none found; searched: {}",
                self.searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        .ok();
        writeln!(out, "# output dir: {}", self.output_dir().display()).ok();
        // The config types serialize without their API keys, which are added as fingerprints.
        match Value::serialize(&self.config).map(Value::into_dict) {
            Ok(Some(dict)) => self.table(&mut out, &mut Vec::new(), &dict),
            _ => out.push_str("# (the configuration could not be rendered)\n"),
        }
        out
    }

    fn table(&self, out: &mut String, path: &mut Vec<String>, dict: &Dict) {
        let mut lines = Vec::new();
        // `kind` first: it says how to read the rest of a provider table.
        let mut leaves: Vec<(&String, &Value)> = dict
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Dict(..)))
            .collect();
        leaves.sort_by_key(|(k, _)| k.as_str() != "kind");
        // A provider's table serializes every part; show only what its kind reads (no HTTP
        // settings for the offline mock).
        if let [first, name] = path.as_slice() {
            if let (true, Some(provider)) = (first == "providers", self.config.providers.get(name))
            {
                let known = provider.known_keys();
                leaves.retain(|(k, _)| known.contains(&k.as_str()));
            }
        }
        for (key, value) in leaves {
            let Some(mut text) = inline(value) else {
                continue;
            };
            if let (true, Value::String(_, url)) =
                (matches!(key.as_str(), "base_url" | "redis_url"), value)
            {
                text = toml::Value::String(super::redacted_url(url)).to_string();
            }
            path.push(key.clone());
            let source = self
                .sources
                .get(path.as_slice())
                .map_or("default", |s| s.as_str());
            lines.push(format!("{} = {text}  # {source}", quote_key(key)));
            path.pop();
        }
        if let [first, name] = path.as_slice() {
            if first == "providers" {
                let fp = |k: &super::ResolvedKey| toml::Value::String(k.fingerprint()).to_string();
                let at = lines.len().min(1);
                match self.api_keys(name) {
                    [] => {}
                    [key] => lines.insert(at, format!("api_key = {}  # {}", fp(key), key.source)),
                    keys => {
                        // One line per key, so each fingerprint sits beside its source.
                        let mut text = format!("api_keys = [  # {} keys, one pool", keys.len());
                        for key in keys {
                            write!(text, "\n  {},  # {}", fp(key), key.source).ok();
                        }
                        text.push_str("\n]");
                        lines.insert(at, text);
                    }
                }
            }
        }
        if !lines.is_empty() {
            if !path.is_empty() {
                writeln!(out, "\n[{}]", dotted(path)).ok();
            }
            for line in lines {
                writeln!(out, "{line}").ok();
            }
        }
        let mut tables: Vec<(&String, &Dict)> = dict
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_dict()?)))
            .collect();
        if path.is_empty() {
            // The order of the example file rather than alphabetical.
            tables.sort_by_key(|(k, _)| TOP_KEYS.iter().position(|t| t == k));
        }
        for (key, sub) in tables {
            path.push(key.clone());
            self.table(out, path, sub);
            path.pop();
        }
    }
}

/// A value as TOML on one line; `None` for an unset option.
fn inline(value: &Value) -> Option<String> {
    Some(match value {
        Value::String(_, s) => toml::Value::String(s.clone()).to_string(),
        Value::Char(_, c) => toml::Value::String(c.to_string()).to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match *n {
            Num::F32(f) => toml::Value::Float(f.into()).to_string(),
            Num::F64(f) => toml::Value::Float(f).to_string(),
            n => n
                .to_i128()
                .map(|i| i.to_string())
                .or_else(|| n.to_u128().map(|u| u.to_string()))?,
        },
        Value::Empty(..) => return None,
        Value::Array(_, items) => {
            format!(
                "[{}]",
                items
                    .iter()
                    .filter_map(inline)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Value::Dict(_, dict) => format!(
            "{{ {} }}",
            dict.iter()
                .filter_map(|(k, v)| Some(format!("{} = {}", quote_key(k), inline(v)?)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}
