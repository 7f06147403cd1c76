//! Configuration errors that name the key, its source and what is allowed, never a value.

use std::fmt;

use figment::error::{Actual, Kind};

/// Why the configuration could not be loaded: a message for people, which never holds a secret.
///
/// Values are never quoted back, because a misplaced API key is exactly the value that would be:
/// messages are rebuilt from the key path, the source and the expected type or values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The redacted, human-readable message (the same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `a.b."c.d"`: a key path as written in TOML.
pub(crate) fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    if path.is_empty() {
        return "(top level)".into();
    }
    path.iter()
        .map(|k| quote_key(k.as_ref()))
        .collect::<Vec<_>>()
        .join(".")
}

/// A TOML key, quoted unless it is a bare key.
pub(crate) fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

/// "an integer", "a string": the kind of a value, never the value.
fn actual(a: &Actual) -> &'static str {
    match a {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit | Actual::Option => "an empty value",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "a value of another type",
    }
}

/// serde's description of the wanted type, in TOML words.
fn expected(exp: &str) -> String {
    match exp {
        "u8" => "an integer from 0 to 255".into(),
        "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "path string" => "a path (a string)".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.to_string(),
    }
}

/// The message for a figment (serde) error at `key` from `source`, built without the value.
pub(crate) fn describe(kind: &Kind, key: &str, source: &str, in_provider_table: bool) -> String {
    let at = format!("`{key}` (from {source})");
    match kind {
        Kind::UnknownField(_, valid) => {
            let mut valid: Vec<&str> = valid.to_vec();
            if in_provider_table {
                // `kind` is taken out before the table is read, so serde does not list it.
                valid.insert(0, "kind");
            }
            format!(
                "unknown key `{key}` (from {source}); valid keys here: {}",
                valid.join(", ")
            )
        }
        Kind::InvalidType(found, exp) => {
            format!("{at}: expected {}, found {}", expected(exp), actual(found))
        }
        Kind::InvalidValue(_, exp) => format!("{at}: invalid value, expected {}", expected(exp)),
        Kind::InvalidLength(len, exp) => format!("{at}: {len} items, expected {exp}"),
        Kind::UnknownVariant(_, valid) => {
            format!("{at}: unknown value, expected one of: {}", valid.join(", "))
        }
        Kind::MissingField(field) => format!("{at}: missing key `{field}`"),
        Kind::DuplicateField(field) => format!("{at}: key `{field}` appears twice"),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => format!("{at}: number out of range"),
        Kind::Unsupported(found) | Kind::UnsupportedKey(found, _) => {
            format!("{at}: {} is not supported here", actual(found))
        }
        // Custom messages may quote the value: say only that it was refused.
        Kind::Message(_) => format!("{at}: invalid value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_only_when_needed() {
        assert_eq!(
            dotted(&["models", "gpt-image-1.5", "max_n"]),
            "models.\"gpt-image-1.5\".max_n"
        );
        assert_eq!(dotted::<&str>(&[]), "(top level)");
    }

    #[test]
    fn values_are_never_quoted() {
        let kind = Kind::InvalidType(Actual::Str("sk-SENTINEL".into()), "u64".into());
        let msg = describe(&kind, "providers.openai.timeout_s", "file /x.toml", false);
        assert!(!msg.contains("SENTINEL"), "{msg}");
        assert!(
            msg.contains("expected a non-negative integer, found a string"),
            "{msg}"
        );
        let msg = describe(&Kind::Message("sk-SENTINEL".into()), "k", "env X", false);
        assert!(!msg.contains("SENTINEL"), "{msg}");
    }
}
