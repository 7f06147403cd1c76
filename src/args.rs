//! Tool arguments read by the tools themselves, so that a malformed argument is answered with
//! a structured tool error naming it (as every other bad input is), not a protocol error.

use std::sync::Arc;

use rmcp::{
    handler::server::{common::FromContextPart, tool::ToolCallContext},
    model::JsonObject,
    ErrorData,
};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ToolError;

/// A tool's arguments as `T`, or the structured error saying which argument is wrong.
#[derive(Debug)]
pub struct Args<T>(pub Result<T, ToolError>);

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Args<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        Ok(Self(parse(context.arguments.take().unwrap_or_default())))
    }
}

/// The input schema of a tool taking `T`, as rmcp derives it for its own extractor.
pub fn input_schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    // Only a type whose schema is not an object fails here: a bug caught by every test.
    rmcp::handler::server::common::schema_for_input::<T>()
        .unwrap_or_else(|e| panic!("the input schema of {}: {e}", std::any::type_name::<T>()))
}

/// Reads `arguments` as `T`; on failure, the argument to blame is the one without which the
/// rest reads (serde loses the path inside flattened option sets), else the missing field.
/// Only failures pay for the search, one read per argument.
fn parse<T: DeserializeOwned>(arguments: JsonObject) -> Result<T, ToolError> {
    let mut value = Value::Object(arguments);
    let err = match T::deserialize(&value) {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    let keys: Vec<String> = value
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    // Outcome of reading without `key`: `Some(true)` reads, `Some(false)` lacks only `key`.
    let mut without = |key: &str| {
        let map = value.as_object_mut()?;
        // Taken out and put back rather than cloned: an edit's arguments can hold megabytes.
        let taken = map.remove(key)?;
        let outcome = match T::deserialize(&value) {
            Ok(_) => Some(true),
            Err(e) => e
                .to_string()
                .starts_with(&format!("missing field `{key}`"))
                .then_some(false),
        };
        value.as_object_mut()?.insert(key.to_string(), taken);
        outcome
    };
    let outcomes: Vec<(String, Option<bool>)> =
        keys.into_iter().map(|k| (k.clone(), without(&k))).collect();
    // An argument whose absence fixes the rest is to blame first; a required one whose value
    // is wrong (its absence only makes it missing) next.
    let culprit = [Some(true), Some(false)].into_iter().find_map(|wanted| {
        outcomes
            .iter()
            .find(|(_, outcome)| *outcome == wanted)
            .map(|(key, _)| key.clone())
    });
    // serde quotes the offending value whole; a client's megabyte string is not echoed back
    // (or logged) in full.
    let message = bounded(err.to_string());
    let culprit = culprit.or_else(|| {
        let rest = message.strip_prefix("missing field `")?;
        Some(rest[..rest.find('`')?].to_string())
    });
    Err(match culprit {
        Some(param) => ToolError::invalid_param(&param, format!("`{param}`: {message}")),
        None => ToolError::new(
            imagegen_providers::ErrorKind::InvalidRequest,
            format!("the arguments cannot be read: {message}"),
        ),
    })
}

/// `text` cut to at most [`MAX_ECHO`] bytes on a character boundary, marked when cut.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ECHO {
        let mut end = MAX_ECHO;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut)");
    }
    text
}

/// The most of a parse error's text a tool result quotes.
const MAX_ECHO: usize = 300;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::GenerateParams;

    fn read(arguments: Value) -> Result<GenerateParams, ToolError> {
        parse(arguments.as_object().unwrap().clone())
    }

    #[test]
    fn a_bad_argument_is_named_even_inside_the_flattened_options() {
        for (arguments, param, says) in [
            (
                json!({"prompt": "x", "output_format": "bmp"}),
                "output_format",
                "png, jpeg",
            ),
            (json!({"prompt": "x", "n": "three"}), "n", "invalid type"),
            (
                json!({"prompt": "x", "resolution": "8k"}),
                "resolution",
                "unknown variant",
            ),
            (json!({"size": "64x64"}), "prompt", "missing field"),
            (json!({"prompt": 7}), "prompt", "invalid type"),
        ] {
            let err = read(arguments.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{arguments}");
            assert!(err.message.contains(says), "{}", err.message);
            assert_eq!(err.kind.as_str(), "invalid_request");
        }
        let ok =
            read(json!({"prompt": "x", "output_format": "JPG", "aspect_ratio": "16:9"})).unwrap();
        assert_eq!(
            ok.options.output_format,
            Some(imagegen_providers::ImageFormat::Jpeg)
        );
    }
}
