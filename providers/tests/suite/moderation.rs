//! The moderation pre-check against a fake `POST /v1/moderations`: verdicts flagged and
//! clean, retries, unusable answers, edit images as `image_url` parts (one per request, as
//! OpenAI takes them), the key kept out of errors, and the decorators passing the call on.

use std::{sync::Arc, time::Duration};

use imagegen_providers::{
    catalog::Catalog,
    layers::{Checked, Limit, Limited},
    openai::{OpenAiProvider, OpenAiSettings},
    CallOptions, ErrorKind, ImageFormat, ImageProvider, InputImage, ModerationInput,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, Request, ResponseTemplate,
};

const KEY: &str = "sk-SENTINEL-moderation-0123456789";
const MODERATIONS: &str = "/v1/moderations";

fn provider(server: &MockServer) -> OpenAiProvider {
    let base = format!("{}/v1", server.uri()).parse().unwrap();
    let mut s = OpenAiSettings::new(base, Some(SecretString::from(KEY)));
    s.max_retries = 2;
    s.retry_base = Duration::from_millis(10);
    OpenAiProvider::new(s, reqwest::Client::new())
}

/// An answer as OpenAI gives it, with the categories in `flagged` set.
fn answer(flagged: &[&str]) -> Value {
    let names = [
        "harassment",
        "harassment/threatening",
        "hate",
        "illicit/violent",
        "self-harm",
        "sexual",
        "violence",
    ];
    let categories: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), Value::Bool(flagged.contains(n))))
        .collect();
    let scores: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                json!(if flagged.contains(n) { 0.93 } else { 0.001 }),
            )
        })
        .collect();
    json!({
        "id": "modr-42",
        "model": "omni-moderation-2024-09-26",
        "results": [{
            "flagged": !flagged.is_empty(),
            "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": {"violence": ["text"]},
        }],
    })
}

async fn mount(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn sent(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

fn body(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

#[tokio::test]
async fn a_flagged_prompt_names_its_categories_through_the_decorators() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(answer(&["violence", "harassment/threatening"]))
                .insert_header("x-request-id", "req_mod_1"),
        )
        .mount(&server)
        .await;
    // As the server builds it: the catalog check and the limits around the provider.
    let checked = Checked::new(Arc::new(provider(&server)), Arc::new(Catalog::builtin()));
    let wrapped = Limited::new(Arc::new(checked), vec![Limit::new(1, "the test's")]);
    assert!(wrapped.moderates());

    let verdict = wrapped
        .moderate(
            &ModerationInput::text("a threatening scene"),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    assert!(verdict.flagged);
    let mut categories = verdict.categories.clone();
    categories.sort();
    assert_eq!(categories, ["harassment/threatening", "violence"]);
    assert_eq!(verdict.model, "omni-moderation-2024-09-26");
    assert_eq!(verdict.request_id.as_deref(), Some("req_mod_1"));

    let requests = sent(&server).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        body(&requests[0]),
        json!({"model": "omni-moderation-latest", "input": "a threatening scene"})
    );
}

#[tokio::test]
async fn a_clean_prompt_is_not_flagged_and_the_model_can_be_chosen() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(answer(&[])),
    )
    .await;
    let verdict = provider(&server)
        .moderate(
            &ModerationInput::text("a lighthouse at dusk").with_model("omni-moderation-2024-09-26"),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    assert!(!verdict.flagged);
    assert!(verdict.categories.is_empty());
    assert_eq!(
        body(&sent(&server).await[0])["model"],
        "omni-moderation-2024-09-26"
    );
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_retry_answers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"error": {"message": "The server had an error", "type": "server_error"}}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(answer(&["hate"])),
    )
    .await;
    let verdict = provider(&server)
        .moderate(&ModerationInput::text("x"), &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(verdict.categories, ["hate"]);
    assert_eq!(sent(&server).await.len(), 2, "one failure, one retry");
}

#[tokio::test]
async fn a_lasting_outage_fails_as_unavailable_after_the_retries() {
    let server = MockServer::start().await;
    mount(&server, ResponseTemplate::new(503)).await;
    let err = provider(&server)
        .moderate(&ModerationInput::text("x"), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable, "{err}");
    assert_eq!(
        sent(&server).await.len(),
        3,
        "the first attempt and two retries"
    );
}

#[tokio::test]
async fn unusable_answers_are_bad_responses_and_not_retried() {
    for (answer, why) in [
        (
            ResponseTemplate::new(200).set_body_string("{not json"),
            "not JSON",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"id": "modr-1", "model": "m"})),
            "no results",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"results": []})),
            "empty results",
        ),
        (
            ResponseTemplate::new(200).set_body_string("x".repeat(2 * 1024 * 1024)),
            "over the body cap",
        ),
    ] {
        let server = MockServer::start().await;
        mount(&server, answer).await;
        let err = provider(&server)
            .moderate(&ModerationInput::text("x"), &CallOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse, "{why}: {err}");
        assert!(err.request_sent, "{why}");
        assert_eq!(sent(&server).await.len(), 1, "{why}: not retried");
    }
}

#[tokio::test]
async fn edit_images_go_as_data_url_parts_one_image_per_request() {
    let server = MockServer::start().await;
    // The second image is what the classifier flags.
    Mock::given(method("POST"))
        .and(path(MODERATIONS))
        .and(wiremock::matchers::body_string_contains("iVBORw0KGgo"))
        .and(wiremock::matchers::body_string_contains("\"text\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(&[])))
        .mount(&server)
        .await;
    mount(
        &server,
        ResponseTemplate::new(200)
            .set_body_json(answer(&["sexual"]))
            .insert_header("x-request-id", "req_second"),
    )
    .await;
    let png = imagegen_testkit::img::png(8, 8);
    let jpeg = imagegen_testkit::img::jpeg(8, 8);
    let images = vec![
        InputImage::new(png.clone(), ImageFormat::Png, "a.png"),
        InputImage::new(jpeg.clone(), ImageFormat::Jpeg, "b.jpg"),
    ];
    let verdict = provider(&server)
        .moderate(
            &ModerationInput::text("make it night").with_images(images),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    assert!(verdict.flagged);
    assert_eq!(verdict.categories, ["sexual"]);
    assert_eq!(verdict.request_id.as_deref(), Some("req_second"));

    let mut bodies: Vec<Value> = sent(&server).await.iter().map(body).collect();
    assert_eq!(bodies.len(), 2, "one request per image");
    bodies.sort_by_key(|b| b["input"].as_array().map_or(0, Vec::len));
    let png_url = format!("data:image/png;base64,{}", imagegen_testkit::img::b64(&png));
    let jpeg_url = format!(
        "data:image/jpeg;base64,{}",
        imagegen_testkit::img::b64(&jpeg)
    );
    assert_eq!(
        bodies[0]["input"],
        json!([{"type": "image_url", "image_url": {"url": jpeg_url}}])
    );
    assert_eq!(
        bodies[1]["input"],
        json!([
            {"type": "text", "text": "make it night"},
            {"type": "image_url", "image_url": {"url": png_url}},
        ])
    );
}

#[tokio::test]
async fn a_rejected_key_is_an_auth_error_that_never_shows_the_key() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": format!("Incorrect API key provided: {KEY}."),
            "type": "invalid_request_error", "code": "invalid_api_key"}})),
    )
    .await;
    let err = provider(&server)
        .moderate(&ModerationInput::text("x"), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    for text in [
        err.to_string(),
        format!("{err:?}"),
        err.provider_message.clone().unwrap_or_default(),
    ] {
        assert!(!text.contains("SENTINEL"), "the key leaked: {text}");
    }
}

#[tokio::test]
async fn providers_without_a_moderation_endpoint_refuse_before_sending() {
    let mock = imagegen_providers::mock::MockProvider::new(Default::default());
    assert!(!mock.moderates());
    let err = mock
        .moderate(&ModerationInput::text("x"), &CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported, "{err}");
}
