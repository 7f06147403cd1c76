//! Asking the user before a costly call (`budget.confirm_above_usd`).
//!
//! A call whose estimate is above the threshold goes ahead only when the user said yes: through
//! elicitation where the client offers it (an input-required round trip on 2026-07-28, an
//! `elicitation/create` request on older revisions), or by the model repeating the call with
//! `confirm_cost: true` after asking the user itself. Nothing is reserved or sent before the
//! answer, so a call waiting for a person holds no budget and no in-flight slot.

use std::time::Duration;

use rmcp::{
    model::{
        CallToolResponse, ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema,
        InputRequest, InputRequests, InputRequiredResult, InputResponses, ProtocolVersion,
    },
    service::RequestContext,
    RoleServer,
};
use serde_json::json;

use crate::error::{ToolError, ToolErrorKind};

/// The key of our one input request, and of its answer in `inputResponses`.
const REQUEST_KEY: &str = "confirm_cost";
/// The `requestState` of a confirmation round: it carries nothing to trust, since the call may
/// as well say `confirm_cost: true`; it only tells a retry from a first call.
const REQUEST_STATE: &str = "imagegen-confirm-cost-v1";
/// How long an `elicitation/create` request waits for the person before the call ends.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// What one call needs to know to decide whether to ask.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// `budget.confirm_above_usd`.
    pub threshold_usd: Option<f64>,
    /// The call's estimate before anything is sent (all items of a batch together).
    pub estimate_usd: Option<f64>,
    /// The call said `confirm_cost: true`.
    pub confirmed: bool,
    /// What the call does, for the question (`generate 4 images with gpt-image-2.6-flare`).
    pub what: &'a str,
}

impl Spend<'_> {
    /// The estimate when it is above the threshold and nobody has confirmed it yet.
    fn needs_asking(&self) -> Option<(f64, f64)> {
        let (threshold, estimate) = (self.threshold_usd?, self.estimate_usd?);
        (estimate > threshold && !self.confirmed).then_some((estimate, threshold))
    }
}

/// Asks the user when `spend` says so: `Ok` when the call may go on, else the answer to give
/// now (an input-required result, or a `confirmation_required` / `declined` error).
pub async fn ask(
    spend: Spend<'_>,
    context: &RequestContext<RoleServer>,
    request_state: Option<&str>,
    responses: Option<&InputResponses>,
) -> Result<(), Refusal> {
    let Some((estimate, threshold)) = spend.needs_asking() else {
        return Ok(());
    };
    let question = format!(
        "This call will {} for an estimated ${estimate:.2} (above the confirmation threshold of ${threshold:.2}, budget.confirm_above_usd). Go ahead?",
        spend.what
    );
    if request_state == Some(REQUEST_STATE) {
        if let Some(answer) = responses.and_then(|r| r.get(REQUEST_KEY)) {
            return verdict(answer_of(answer), estimate, threshold);
        }
    }
    let stateless = context
        .protocol_version()
        .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
    let can_elicit = context
        .client_capabilities()
        .is_some_and(|caps| caps.elicitation.is_some());
    if !can_elicit {
        return Err(Refusal::Error(unconfirmed(estimate, threshold)));
    }
    if stateless {
        let mut requests = InputRequests::new();
        requests.insert(
            REQUEST_KEY.to_string(),
            InputRequest::Elicitation(ElicitRequest::new(form(question))),
        );
        return Err(Refusal::Ask(InputRequiredResult::new(
            Some(requests),
            Some(REQUEST_STATE.to_string()),
        )));
    }
    let asked = context
        .peer
        .create_elicitation_with_timeout(form(question), Some(ANSWER_TIMEOUT))
        .await;
    match asked {
        Ok(result) => {
            let answer = serde_json::to_value(&result).unwrap_or_default();
            verdict(answer_of(&answer), estimate, threshold)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the client could not ask the user to confirm a costly call");
            Err(Refusal::Error(unconfirmed(estimate, threshold)))
        }
    }
}

/// How [`ask`] ends a call that may not go on yet.
#[derive(Debug)]
pub enum Refusal {
    /// Ask the user through the client, then retry (2026-07-28).
    Ask(InputRequiredResult),
    /// Answer with this error.
    Error(ToolError),
}

impl Refusal {
    /// The tool response, with `error` shaping an error result.
    pub fn into_response(
        self,
        error: impl FnOnce(ToolError) -> rmcp::model::CallToolResult,
    ) -> CallToolResponse {
        match self {
            Self::Ask(input) => CallToolResponse::InputRequired(input),
            Self::Error(e) => CallToolResponse::Complete(error(e)),
        }
    }
}

/// The form asking for a yes: one boolean, so every client can render it.
fn form(message: String) -> ElicitRequestParams {
    let schema: ElicitationSchema = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "confirm": {
                "type": "boolean",
                "title": "Spend this much",
                "description": "Yes: make the images at this cost.",
                "default": true
            }
        },
        "required": ["confirm"]
    }))
    .expect("a constant, valid elicitation schema");
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: schema,
    }
}

/// The user's answer in an elicitation result (`{action, content}`), whatever its shape.
fn answer_of(result: &serde_json::Value) -> bool {
    let accepted = serde_json::from_value::<ElicitationAction>(result["action"].clone())
        .is_ok_and(|a| a == ElicitationAction::Accept);
    // A form that came back without the field still was an "accept" of the question.
    accepted && result["content"]["confirm"].as_bool() != Some(false)
}

fn verdict(yes: bool, estimate: f64, threshold: f64) -> Result<(), Refusal> {
    if yes {
        tracing::info!(estimate_usd = estimate, "the user confirmed a costly call");
        Ok(())
    } else {
        tracing::info!(estimate_usd = estimate, "the user declined a costly call");
        Err(Refusal::Error(declined(estimate, threshold)))
    }
}

fn unconfirmed(estimate: f64, threshold: f64) -> ToolError {
    ToolError {
        kind: ToolErrorKind::ConfirmationRequired,
        param: Some("confirm_cost".into()),
        ..ToolError::internal(format!(
            "this call is estimated at ${estimate:.2}, above the server's confirmation threshold of ${threshold:.2} (budget.confirm_above_usd), and this client cannot ask the user; nothing was sent. Ask the user whether to spend this, and if they agree repeat the same call with `confirm_cost: true`."
        ))
    }
}

fn declined(estimate: f64, threshold: f64) -> ToolError {
    ToolError {
        kind: ToolErrorKind::Declined,
        ..ToolError::internal(format!(
            "the user declined to spend an estimated ${estimate:.2} (the confirmation threshold is ${threshold:.2}); nothing was sent. Do not repeat the call unless the user asks for it."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_estimate_above_the_threshold_that_nobody_confirmed_asks() {
        let spend = |threshold, estimate, confirmed| Spend {
            threshold_usd: threshold,
            estimate_usd: estimate,
            confirmed,
            what: "generate",
        };
        assert_eq!(
            spend(Some(0.5), Some(0.76), false).needs_asking(),
            Some((0.76, 0.5))
        );
        assert_eq!(spend(Some(0.5), Some(0.5), false).needs_asking(), None);
        assert_eq!(spend(Some(0.5), Some(0.76), true).needs_asking(), None);
        assert_eq!(spend(None, Some(9.0), false).needs_asking(), None);
        // An unknown price is the budget's business (`budget.allow_unpriced`), not a question.
        assert_eq!(spend(Some(0.5), None, false).needs_asking(), None);
    }

    #[test]
    fn answers_are_read_whatever_their_shape() {
        assert!(answer_of(
            &json!({"action": "accept", "content": {"confirm": true}})
        ));
        assert!(answer_of(&json!({"action": "accept"})));
        assert!(!answer_of(
            &json!({"action": "accept", "content": {"confirm": false}})
        ));
        assert!(!answer_of(&json!({"action": "decline"})));
        assert!(!answer_of(&json!({"action": "cancel"})));
        assert!(!answer_of(&json!("yes")));
        assert!(!answer_of(&json!(null)));
    }

    #[test]
    fn the_form_schema_is_valid() {
        let ElicitRequestParams::FormElicitationParams {
            requested_schema, ..
        } = form("?".into())
        else {
            panic!("a form");
        };
        let schema = serde_json::to_value(requested_schema).unwrap();
        assert_eq!(schema["properties"]["confirm"]["type"], "boolean");
    }
}
