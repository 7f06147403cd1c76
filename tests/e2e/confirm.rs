//! `budget.confirm_above_usd` through the real binary: a costly call asks the user through
//! the client (an `elicitation/create` request on 2025-11-25, an input-required round trip on
//! 2026-07-28), goes ahead on a yes, sends nothing on a no, and tells a client that cannot ask
//! to repeat the call with `confirm_cost: true`.

use std::sync::{Arc, Mutex};

use crate::common::*;
use base64::Engine as _;
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        ElicitRequestParams, ElicitResult, ElicitationAction, ProtocolVersion,
    },
    service::{RequestContext, RunningService},
    ClientHandler, ErrorData, RoleClient,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

/// A client that can ask its user, who answers `answer`; it records each question.
#[derive(Debug, Clone)]
struct Asker {
    version: ProtocolVersion,
    answer: ElicitationAction,
    asked: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Asker {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = self.version.clone();
        info.capabilities = ClientCapabilities::builder().enable_elicitation().build();
        info
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Err(ErrorData::invalid_params("a form was expected", None));
        };
        self.asked.lock().unwrap().push(message);
        let result = ElicitResult::new(self.answer.clone());
        Ok(match self.answer {
            ElicitationAction::Accept => result.with_content(json!({"confirm": true})),
            _ => result,
        })
    }
}

/// An OpenAI upstream that makes one PNG per request.
async fn upstream() -> MockServer {
    let server = MockServer::start().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(1024, 1024).await);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1, "data": [{"b64_json": b64}]})))
        .mount(&server)
        .await;
    server
}

/// Starts the server against `upstream` with a confirmation threshold of $0.10, and connects
/// `handler` to it.
async fn start<H: ClientHandler>(
    home: &std::path::Path,
    upstream: &MockServer,
    handler: H,
) -> RunningService<RoleClient, H> {
    std::fs::write(
        home.join("imagegen.toml"),
        "[budget]\nconfirm_above_usd = 0.10\n",
    )
    .unwrap();
    let base = format!("{}/v1", upstream.uri());
    let envs = [
        ("OPENAI_API_KEY", SENTINEL_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    serve_to(home, &envs, handler).await
}

/// `gpt-image-2` at high quality: $0.19 a 1024² image by the estimate table, above $0.10.
fn costly(extra: Value) -> CallToolRequestParams {
    let mut arguments = json!({
        "prompt": "a lighthouse", "size": "1024x1024", "quality": "high", "model": "gpt-image-2"
    });
    arguments
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    CallToolRequestParams::new("generate_image").with_arguments(args(arguments))
}

fn error_kind(result: &CallToolResult) -> String {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let structured = result
        .structured_content
        .clone()
        .expect("structuredContent");
    structured["error"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn asked_and_answered(version: ProtocolVersion) {
    for (answer, goes_ahead) in [
        (ElicitationAction::Accept, true),
        (ElicitationAction::Decline, false),
        (ElicitationAction::Cancel, false),
    ] {
        let upstream = upstream().await;
        let home = tempfile::tempdir().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let handler = Asker {
            version: version.clone(),
            answer: answer.clone(),
            asked: asked.clone(),
        };
        let client = start(home.path(), &upstream, handler).await;

        // Below the threshold nobody is asked.
        let cheap = client
            .call_tool(costly(json!({"quality": "low"})))
            .await
            .unwrap();
        assert_ne!(cheap.is_error, Some(true), "{cheap:?}");
        assert!(asked.lock().unwrap().is_empty());
        let before = upstream.received_requests().await.unwrap().len();

        let result = client.call_tool(costly(json!({}))).await.unwrap();
        let questions = asked.lock().unwrap().clone();
        assert_eq!(questions.len(), 1, "asked once: {questions:?}");
        assert!(
            questions[0].contains("$0.19") && questions[0].contains("$0.10"),
            "the question gives the estimate and the threshold: {}",
            questions[0]
        );
        let sent = upstream.received_requests().await.unwrap().len() - before;
        if goes_ahead {
            assert_ne!(result.is_error, Some(true), "{result:?}");
            assert_eq!(sent, 1);
        } else {
            assert_eq!(error_kind(&result), "declined", "{answer:?}");
            assert_eq!(sent, 0, "a declined call sends nothing");
        }
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn a_costly_call_asks_through_elicitation_on_2025_11_25() {
    asked_and_answered(ProtocolVersion::V_2025_11_25).await;
}

#[tokio::test]
async fn a_costly_call_asks_through_an_input_required_round_trip_on_2026_07_28() {
    asked_and_answered(ProtocolVersion::V_2026_07_28).await;
}

#[tokio::test]
async fn a_client_that_cannot_ask_is_told_to_confirm_with_confirm_cost() {
    for version in [ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2026_07_28] {
        let upstream = upstream().await;
        let home = tempfile::tempdir().unwrap();
        let client = start(home.path(), &upstream, VersionedClient(version.clone())).await;

        let refused = client.call_tool(costly(json!({}))).await.unwrap();
        assert_eq!(error_kind(&refused), "confirmation_required");
        let message = refused.structured_content.clone().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("confirm_cost: true") && message.contains("$0.19"),
            "{message}"
        );
        assert!(upstream.received_requests().await.unwrap().is_empty());

        // A batch is judged by all its items together: two at $0.07 pass $0.10.
        let batch = CallToolRequestParams::new("generate_images").with_arguments(args(json!({
            "prompts": ["a", "b"], "size": "1024x1024", "quality": "medium", "model": "gpt-image-2"
        })));
        let refused = client.call_tool(batch).await.unwrap();
        assert_eq!(refused.is_error, Some(true), "{refused:?}");
        assert!(
            format!("{:?}", refused.structured_content).contains("confirmation_required"),
            "{refused:?}"
        );

        let confirmed = client
            .call_tool(costly(json!({"confirm_cost": true})))
            .await
            .unwrap();
        assert_ne!(confirmed.is_error, Some(true), "{confirmed:?}");
        assert_eq!(upstream.received_requests().await.unwrap().len(), 1);
        client.cancel().await.unwrap();
    }
}
