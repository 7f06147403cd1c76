//! Azure's error answers, read after OpenAI's table: its content filter's verdicts, the
//! deployment a 404 did not find, and what a 401 means for a key or an Entra ID token.

use serde_json::Value;

use crate::{openai::flavour::ErrorContext, ErrorKind, ProviderError};

/// Codes Azure gives a request or result its content filter blocked.
const FILTER_CODES: [&str; 5] = [
    "contentFilter",
    "content_filter",
    "content_policy_violation",
    "ResponsibleAIPolicyViolation",
    "moderation_blocked",
];

/// The message Azure gives an image its output filter withheld.
const OUTPUT_FILTERED: &str = "generated image was filtered";

/// What an Azure error body says, leniently: `{"error": {"code", "message", "inner_error":
/// {"code"}}}` (`innererror` in older API versions).
#[derive(Debug, Default)]
struct AzureDetail {
    code: Option<String>,
    inner_code: Option<String>,
    message: Option<String>,
}

impl AzureDetail {
    fn parse(body: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let Some(error) = json.get("error").filter(|e| e.is_object()) else {
            return Self::default();
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let inner = error.get("inner_error").or_else(|| error.get("innererror"));
        Self {
            code: text(error.get("code")),
            inner_code: text(inner.and_then(|i| i.get("code"))),
            message: text(error.get("message")),
        }
    }

    fn filtered(&self) -> bool {
        let coded = [&self.code, &self.inner_code]
            .into_iter()
            .flatten()
            .any(|c| FILTER_CODES.contains(&c.as_str()));
        coded
            || self.message.as_deref().is_some_and(|m| {
                let m = m.to_ascii_lowercase();
                m.contains("safety system") || m.contains(OUTPUT_FILTERED)
            })
    }

    fn output_filtered(&self) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains(OUTPUT_FILTERED))
    }
}

/// `err` as Azure means it; see the module documentation.
pub(crate) fn refine(mut err: ProviderError, cx: &ErrorContext<'_>) -> ProviderError {
    let detail = AzureDetail::parse(cx.body);
    let deployment = cx.model.unwrap_or("the deployment");
    match cx.status {
        200 | 400 | 403 | 422 if detail.filtered() => {
            err.kind = ErrorKind::ContentPolicy;
            err.message = match detail.output_filtered() {
                true => "Azure's content filter withheld the generated image; rephrase the prompt",
                false => "the prompt was refused by Azure's content filter; rephrase it",
            }
            .into();
            // The inner code says which policy fired; the outer one is generic.
            if let Some(inner) = detail
                .inner_code
                .filter(|c| FILTER_CODES.contains(&c.as_str()))
            {
                err.provider_code = Some(inner);
            }
            err.with_retryable(false)
        }
        404 => {
            err.kind = ErrorKind::NotFound;
            let said = detail
                .code
                .as_deref()
                .filter(|c| *c == "DeploymentNotFound")
                .map(|c| format!(", {c}"))
                .unwrap_or_default();
            err.message = format!(
                "Azure has no deployment `{deployment}` on this resource (HTTP 404{said}): `model` \
                 (or `deployment`) must be the name the deployment was given in Azure, which is \
                 not always the model's name (such as gpt-image-2); check the deployment name and \
                 the endpoint"
            );
            err
        }
        401 => {
            err.message = match (cx.token, cx.key) {
                (true, _) => "the Entra ID token was refused (HTTP 401), a fresh one too: check \
                              that the identity has the Cognitive Services OpenAI User role on \
                              the resource and that the token's scope is \
                              https://ai.azure.com/.default"
                    .to_string(),
                (false, Some(key)) => format!(
                    "the api-key {} was rejected (HTTP 401): check that it is a current key of \
                     this resource",
                    key.fingerprint()
                ),
                (false, None) => "Azure requires a credential and none is set (HTTP 401): set \
                                  AZURE_OPENAI_API_KEY or api_key, or token_command / token_file \
                                  for Entra ID"
                    .to_string(),
            };
            err
        }
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refined(status: u16, body: &str) -> ProviderError {
        let cx = ErrorContext {
            status,
            body: body.as_bytes(),
            key: None,
            token: false,
            model: Some("my-dep"),
        };
        refine(
            ProviderError::new(ErrorKind::InvalidRequest, "x").with_status(status),
            &cx,
        )
    }

    #[test]
    fn every_content_filter_shape_is_a_content_policy_refusal() {
        for (status, body) in [
            (
                400,
                r#"{"created":1,"error":{"code":"contentFilter","message":"Your task failed as a result of our safety system."}}"#,
            ),
            (
                200,
                r#"{"created":1,"error":{"code":"contentFilter","message":"Generated image was filtered as a result of our safety system."}}"#,
            ),
            (
                400,
                r#"{"error":{"code":"content_policy_violation","message":"blocked","inner_error":{"code":"ResponsibleAIPolicyViolation","content_filter_results":{"violence":{"filtered":true,"severity":"high"}}}}}"#,
            ),
            (
                400,
                r#"{"error":{"code":"BadRequest","message":"no","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
            ),
        ] {
            let err = refined(status, body);
            assert_eq!(err.kind, ErrorKind::ContentPolicy, "{body}");
            assert!(!err.retryable, "{body}");
        }
        let output = refined(
            200,
            r#"{"error":{"code":"contentFilter","message":"Generated image was filtered as a result of our safety system."}}"#,
        );
        assert!(
            output.message.contains("withheld the generated image"),
            "{output}"
        );
        let inner = refined(
            400,
            r#"{"error":{"code":"content_policy_violation","inner_error":{"code":"ResponsibleAIPolicyViolation"}}}"#,
        );
        assert_eq!(
            inner.provider_code.as_deref(),
            Some("ResponsibleAIPolicyViolation")
        );
        // Other 400s stay what OpenAI's table made them; a hostile body cannot panic it.
        for body in [
            r#"{"error":{"code":"invalid_size","message":"bad size"}}"#,
            "[",
            r#"{"error":7}"#,
        ] {
            assert_eq!(refined(400, body).kind, ErrorKind::InvalidRequest, "{body}");
        }
    }

    #[test]
    fn a_404_names_the_deployment_and_the_likely_mix_up() {
        let err = refined(
            404,
            r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#,
        );
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("`my-dep`"), "{err}");
        assert!(err.message.contains("DeploymentNotFound"), "{err}");
        assert!(err.message.contains("not always the model's name"), "{err}");
    }
}
