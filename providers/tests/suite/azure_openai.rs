//! The Azure OpenAI provider against a fake Azure resource: the shared conformance suite and
//! error and hostile rows, then Azure's own ways: the v1 path with `api-version`, the
//! deployment name as `model`, the deployment-scoped edits path, the `api-key` header, Entra
//! ID tokens from a command refreshed after a 401, content-filter shapes, the deployment
//! 404, and Azure's catalog (its retirement dates, no WEBP).

use std::{collections::BTreeMap, io::Cursor, sync::Arc, time::Duration};

use crate::common::Form;
use base64::Engine as _;
use imagegen_providers::{
    azure_openai,
    build::{BuildContext, KindConfig, ProviderConfig},
    http::ClientCache,
    keys::KeyPool,
    layers::Checked,
    testing::{
        assert_no_sentinel, conformance, error_rows, hostile_rows, ConformanceStub, Fault,
        StubTarget,
    },
    validate::parse_size,
    Catalog, EditRequest, ErrorKind, GenerateRequest, ImageFormat, ImageProvider, ImageProviderExt,
    InputImage,
};
use imagegen_testkit::{img, openai as testkit_openai, Chunk, Reply};
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path, path_regex},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

const KEY: &str = "azure-SENTINEL-key-0123456789abcdef";

/// An Azure provider built from its configuration as the server builds it, behind the
/// catalog checks every caller puts in front of it.
fn build(endpoint: &str, key: Option<&str>, tweak: impl FnOnce(&mut ProviderConfig)) -> Checked {
    let mut config = ProviderConfig::of(KindConfig::AzureOpenai(azure_openai::Config {
        endpoint: endpoint.into(),
        ..azure_openai::Config::default()
    }));
    config.http.max_retries = 0;
    config.http.timeout_s = 5;
    tweak(&mut config);
    config.check().expect("valid settings");
    let keys = key.map(|k| (SecretString::from(k.to_string()), "test".to_string()));
    let catalog = Arc::new(config.kind.catalog());
    let provider = config
        .build(BuildContext {
            keys: Arc::new(KeyPool::new(keys, Duration::from_secs(600))),
            catalog: catalog.clone(),
            clients: &ClientCache::default(),
        })
        .expect("builds");
    Checked::new(provider, catalog)
}

fn azure_config(config: &mut ProviderConfig) -> &mut azure_openai::Config {
    match &mut config.kind {
        KindConfig::AzureOpenai(a) => a,
        _ => unreachable!("an Azure configuration"),
    }
}

fn encoded(width: u32, height: u32, format: image::ImageFormat) -> String {
    let pixels = image::RgbImage::from_pixel(width, height, image::Rgb([20, 120, 200]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, format)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

fn sse(name: &str, mut data: Value) -> String {
    data["type"] = name.into();
    format!("event: {name}\ndata: {data}\n\n")
}

/// A fake Azure resource: answers generations and edits with the images asked for (streamed
/// when asked to), as JSON with `b64_json` the way Azure's GPT image deployments do.
struct FakeAzure;

impl Respond for FakeAzure {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (body, events) = match Form::parse(request) {
            Some(form) => {
                let fields: serde_json::Map<String, Value> = form
                    .texts()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
                    .collect();
                (Value::Object(fields), "image_edit")
            }
            None => (
                request.body_json().unwrap_or(Value::Null),
                "image_generation",
            ),
        };
        let n = body["n"].as_u64().unwrap_or(1);
        let (width, height) = body["size"]
            .as_str()
            .and_then(parse_size)
            .unwrap_or((1024, 1024));
        let format = match body["output_format"].as_str() {
            Some("jpeg") => image::ImageFormat::Jpeg,
            // Azure has no WEBP: an honest fake refuses it.
            Some("webp") => {
                return ResponseTemplate::new(400)
                    .set_body_json(json!({"error": {"code": "invalid_value", "message": "webp"}}))
            }
            _ => image::ImageFormat::Png,
        };
        if body["stream"] == json!(true) {
            let partials = body["partial_images"].as_u64().unwrap_or(0);
            let mut text: String = (0..partials)
                .map(|i| {
                    let data = json!({"b64_json": encoded(width / 4, height / 4, format),
                                      "partial_image_index": i});
                    sse(&format!("{events}.partial_image"), data)
                })
                .collect();
            let data = json!({"b64_json": encoded(width, height, format)});
            text += &sse(&format!("{events}.completed"), data);
            return ResponseTemplate::new(200).set_body_raw(text, "text/event-stream");
        }
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": encoded(width, height, format)}))
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({"created": 1, "data": data}))
    }
}

/// Serves Azure's two image routes: the v1 generations path and the deployment-scoped edits.
async fn fake_resource() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/v1/images/generations"))
        .respond_with(FakeAzure)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/openai/deployments/[^/]+/images/edits$"))
        .respond_with(FakeAzure)
        .mount(&server)
        .await;
    server
}

fn query(request: &Request) -> BTreeMap<String, String> {
    request.url.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn azure_provider_conforms_against_a_fake_resource() {
    let server = fake_resource().await;
    let provider = build(&server.uri(), Some(KEY), |_| {});
    let calls = conformance(&provider).await;
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), calls, "one request per call, no retries");
    for request in &received {
        let (path, query) = (request.url.path(), query(request));
        assert_eq!(request.headers.get("api-key").unwrap(), KEY, "{path}");
        assert!(request.headers.get("authorization").is_none(), "{path}");
        if path.ends_with("/edits") {
            assert_eq!(path, "/openai/deployments/gpt-image-2/images/edits");
            assert_eq!(query["api-version"], "2025-04-01-preview");
            // The deployment is in the path: the form names no model.
            assert_eq!(Form::parse(request).unwrap().text("model"), None);
        } else {
            assert_eq!(query["api-version"], "preview");
            assert_eq!(
                request.body_json::<Value>().unwrap()["model"],
                "gpt-image-2"
            );
        }
    }
}

// ---- error and hostile rows ---------------------------------------------------------------

/// Azure's wire format, as the rows script it.
struct AzureStub;

impl ConformanceStub for AzureStub {
    fn model(&self) -> &str {
        azure_openai::DEFAULT_MODEL
    }

    fn answer_ok(&self, n: usize) -> Reply {
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": img::b64(&img::png(8, 8))}))
            .collect();
        Reply::json(&json!({"created": 1, "data": data}))
    }

    fn answer_error(&self, status: u16, fault: Fault<'_>) -> Reply {
        let error = match fault {
            Fault::Field { field, value } => {
                let mut error = json!({"code": "BadRequest", "message": "bad", "param": null,
                                       "type": null});
                error[field] = value.into();
                error
            }
            Fault::Refusal => json!({
                "code": "content_policy_violation",
                "message": "Your request was rejected as a result of our safety system.",
                "inner_error": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_results": {"violence": {"filtered": true, "severity": "high"}}
                }
            }),
        };
        Reply::error(status, &json!({ "error": error }))
    }

    fn answer_urls(&self, urls: &[String]) -> Option<Reply> {
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        Some(Reply::json(&testkit_openai::url_body(&urls)))
    }

    fn answer_broken_stream(&self) -> Option<Reply> {
        let partial = testkit_openai::partial_event(0, &img::png(8, 8));
        Some(Reply::sse(vec![
            Chunk::text(partial),
            Chunk::Pause(Duration::from_millis(50)),
            Chunk::Drop,
        ]))
    }
}

/// An Azure provider against a row's fake upstream, with retries off.
fn azure_against(target: StubTarget) -> Box<dyn ImageProvider> {
    let provider = build(target.base_url.as_str(), Some(target.key), |c| {
        c.http.retry_after_cap_s = target.retry_after_cap.as_secs();
        c.http.timeout_s = target.timeout.as_secs().max(1);
    });
    Box::new(provider)
}

#[tokio::test]
async fn azure_provider_maps_every_error_row() {
    error_rows(&azure_against, &AzureStub).await;
}

#[tokio::test]
async fn azure_provider_withstands_a_hostile_upstream() {
    hostile_rows(&azure_against, &AzureStub).await;
}

// ---- Azure's own ways -----------------------------------------------------------------------

#[tokio::test]
async fn the_deployment_is_sent_as_model_and_its_model_s_rules_apply() {
    let server = fake_resource().await;
    let provider = build(&format!("{}/openai/v1/", server.uri()), Some(KEY), |c| {
        let a = azure_config(c);
        a.deployment = Some("prod-images".into());
        a.deployment_model = Some("gpt-image-1.5".into());
        a.deployments = BTreeMap::from([("cheap".to_string(), "gpt-image-1-mini".to_string())]);
        a.api_version = "2026-01-01-preview".into();
    });
    assert_eq!(provider.default_model(), "prod-images");
    assert_eq!(provider.models(), ["prod-images", "cheap"]);
    // The deployments carry Azure's dates of the models they serve, not OpenAI's.
    let prod = provider.capabilities("prod-images");
    assert!(prod.known);
    assert_eq!(prod.shutdown_date.as_deref(), Some("2026-12-16"));
    assert_eq!(prod.replacement.as_deref(), Some("gpt-image-2"));
    assert_eq!(
        provider.capabilities("cheap").shutdown_date.as_deref(),
        Some("2027-04-07")
    );
    assert!(provider.lifecycle_is_authoritative());
    // `model` naming the deployment works as well for its rules.
    let by_model = build(&server.uri(), Some(KEY), |c| {
        c.common.model = Some("other-dep".into());
        azure_config(c).deployment_model = Some("gpt-image-1-mini".into());
    });
    assert_eq!(by_model.default_model(), "other-dep");
    assert_eq!(
        by_model.capabilities("other-dep").shutdown_date.as_deref(),
        Some("2027-04-07")
    );
    assert!(
        provider.aliases().is_empty(),
        "OpenAI's aliases name no deployment"
    );

    let mut request = GenerateRequest::new("a lighthouse", "prod-images");
    request.options.size = Some("1024x1024".into());
    request.options.partial_images = Some(0);
    let result = provider.generate(&request).await.unwrap();
    assert_eq!(result.images.len(), 1);
    assert_eq!(result.model, "prod-images");
    assert_eq!(result.sent["model"], "prod-images");
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let body: Value = received[0].body_json().unwrap();
    assert_eq!(body["model"], "prod-images");
    // Azure takes partial_images 1-3: 0 means no stream at all.
    assert!(
        body.get("stream").is_none() && body.get("partial_images").is_none(),
        "{body}"
    );
    assert_eq!(
        received[0].url.path(),
        "/openai/v1/images/generations",
        "the SDK-style endpoint is read as the resource"
    );
    assert_eq!(query(&received[0])["api-version"], "2026-01-01-preview");
}

#[tokio::test]
async fn edits_go_to_the_deployment_path_or_to_v1_when_asked() {
    let server = fake_resource().await;
    Mock::given(method("POST"))
        .and(path("/openai/v1/images/edits"))
        .respond_with(FakeAzure)
        .mount(&server)
        .await;
    let image = InputImage::new(img::png(64, 64), ImageFormat::Png, "in.png");
    let mut edit = EditRequest::new("make it blue", "my dep", vec![image]);
    edit.options.size = Some("1024x1024".into());
    let scoped = build(&server.uri(), Some(KEY), |c| {
        azure_config(c).deployment_model = Some("gpt-image-2".into());
        azure_config(c).deployment = Some("my dep".into());
    });
    scoped.edit(&edit).await.unwrap();
    let on_v1 = build(&server.uri(), Some(KEY), |c| {
        azure_config(c).edits_on_v1 = true;
        azure_config(c).deployment_model = Some("gpt-image-2".into());
        azure_config(c).deployment = Some("my dep".into());
    });
    on_v1.edit(&edit).await.unwrap();
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 2);
    // The deployment name is escaped into the path.
    assert_eq!(
        received[0].url.path(),
        "/openai/deployments/my%20dep/images/edits"
    );
    assert_eq!(query(&received[0])["api-version"], "2025-04-01-preview");
    let form = Form::parse(&received[0]).unwrap();
    assert_eq!(form.text("model"), None);
    assert_eq!(form.files("image[]").len(), 1);
    assert_eq!(received[1].url.path(), "/openai/v1/images/edits");
    assert_eq!(query(&received[1])["api-version"], "preview");
    assert_eq!(
        Form::parse(&received[1]).unwrap().text("model").as_deref(),
        Some("my dep")
    );
}

#[tokio::test]
async fn a_404_says_the_deployment_name_is_not_the_model_name() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist. If you created the \
                        deployment within the last 5 minutes, please wait a moment and try again."
        }})))
        .mount(&server)
        .await;
    let provider = build(&server.uri(), Some(KEY), |_| {});
    let err = provider
        .generate(&GenerateRequest::new("x", "gpt-image-2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert_eq!(err.status, Some(404));
    assert!(err.message.contains("no deployment `gpt-image-2`"), "{err}");
    assert!(err.message.contains("DeploymentNotFound"), "{err}");
    assert!(err.message.contains("not always the model's name"), "{err}");
    assert!(!err.retryable);
}

#[tokio::test]
async fn every_content_filter_shape_is_a_content_policy_refusal() {
    let prompt_filtered = json!({"created": 1, "error": {"code": "contentFilter",
        "message": "Your task failed as a result of our safety system."}});
    let output_filtered = json!({"created": 1, "error": {"code": "contentFilter",
        "message": "Generated image was filtered as a result of our safety system."}});
    let inner = json!({"error": {"code": "content_policy_violation", "message": "blocked",
        "inner_error": {"code": "ResponsibleAIPolicyViolation"}}});
    for (status, body, says) in [
        (400, &prompt_filtered, "refused by Azure's content filter"),
        (400, &inner, "refused by Azure's content filter"),
        (400, &output_filtered, "withheld the generated image"),
        // The verdict may come with a 200 and no images.
        (200, &output_filtered, "withheld the generated image"),
        (200, &prompt_filtered, "refused by Azure's content filter"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        let provider = build(&server.uri(), Some(KEY), |_| {});
        let err = provider
            .generate(&GenerateRequest::new("x", "gpt-image-2"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentPolicy, "{status} {body}: {err}");
        assert!(err.message.contains(says), "{status} {body}: {err}");
        assert!(!err.retryable, "{status}");
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }
}

/// A token command as a script: prints `tok-SENTINEL-N`, N counting its runs.
fn token_script(dir: &std::path::Path) -> Vec<String> {
    let count = dir.join("count");
    let script = dir.join("token.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho x >> {c}\necho \"tok-SENTINEL-$(wc -l < {c} | tr -d ' ')\"\n",
            c = count.display()
        ),
    )
    .unwrap();
    vec!["sh".into(), script.display().to_string()]
}

/// Answers a request bearing `Bearer tok-SENTINEL-1` with a 401 echoing it, any other with an image.
struct RefusesFirstToken;

impl Respond for RefusesFirstToken {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        match auth.as_str() {
            "Bearer tok-SENTINEL-1" | "" => ResponseTemplate::new(401).set_body_json(json!({
                "error": {"code": "401", "message": format!("Access denied: {auth}")}
            })),
            _ => ResponseTemplate::new(200).set_body_json(testkit_openai::ok_body(1, 8)),
        }
    }
}

#[tokio::test]
async fn an_entra_token_from_a_command_is_refreshed_once_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(RefusesFirstToken)
        .mount(&server)
        .await;
    // A key is configured too (a stray AZURE_OPENAI_API_KEY): with a token it is not sent.
    let provider = build(&server.uri(), Some(KEY), |c| {
        azure_config(c).token_command = Some(token_script(dir.path()));
    });
    let request = GenerateRequest::new("x", "gpt-image-2");
    provider.generate(&request).await.unwrap();
    // The fresh token is cached: the next call runs no command.
    provider.generate(&request).await.unwrap();
    let received = server.received_requests().await.unwrap();
    let auths: Vec<&str> = received
        .iter()
        .map(|r| r.headers.get("authorization").unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        auths,
        [
            "Bearer tok-SENTINEL-1",
            "Bearer tok-SENTINEL-2",
            "Bearer tok-SENTINEL-2"
        ]
    );
    assert!(received.iter().all(|r| r.headers.get("api-key").is_none()));
    let runs = std::fs::read_to_string(dir.path().join("count")).unwrap();
    assert_eq!(runs.lines().count(), 2);
    assert!(!format!("{provider:?}").contains("SENTINEL"));
}

#[tokio::test]
async fn a_token_refused_twice_is_an_auth_error_that_never_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_string("denied: Bearer tok-SENTINEL-1 tok-SENTINEL-2"),
        )
        .mount(&server)
        .await;
    let provider = build(&server.uri(), None, |c| {
        azure_config(c).token_command = Some(token_script(dir.path()));
    });
    let err = provider
        .generate(&GenerateRequest::new("x", "gpt-image-2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    assert!(err.message.contains("Entra ID token was refused"), "{err}");
    assert!(
        err.message.contains("Cognitive Services OpenAI User"),
        "{err}"
    );
    assert_no_sentinel(&format!("{err} {err:?}"), "token echo");
    // One refusal, one fresh token, one more refusal: no loop.
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_token_file_is_sent_as_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "tok-from-file\n").unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(testkit_openai::ok_body(1, 8)))
        .mount(&server)
        .await;
    let provider = build(&server.uri(), None, |c| {
        azure_config(c).token_file = Some(file.clone());
    });
    provider
        .generate(&GenerateRequest::new("x", "gpt-image-2"))
        .await
        .unwrap();
    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received[0].headers.get("authorization").unwrap(),
        "Bearer tok-from-file"
    );
}

#[tokio::test]
async fn azure_s_catalog_has_its_own_dates_and_no_webp() {
    let catalog = KindConfig::AzureOpenai(azure_openai::Config::default()).catalog();
    for (model, date) in [
        ("gpt-image-1.5", "2026-12-16"),
        ("gpt-image-1-mini", "2027-04-07"),
        ("gpt-image-2", "2027-04-21"),
        ("gpt-image-1", "2026-10-23"),
    ] {
        let caps = catalog.get(model);
        assert_eq!(caps.shutdown_date.as_deref(), Some(date), "{model}");
        assert!(!caps.formats.contains(&ImageFormat::Webp), "{model}");
        assert!(caps.formats.contains(&ImageFormat::Jpeg), "{model}");
    }
    // OpenAI's own view is unchanged: it shut GPT Image 1.5 on 2026-12-01.
    assert_eq!(
        Catalog::builtin()
            .get("gpt-image-1.5")
            .shutdown_date
            .as_deref(),
        Some("2026-12-01")
    );
    // WEBP is refused before anything is sent.
    let server = fake_resource().await;
    let provider = build(&server.uri(), Some(KEY), |_| {});
    let mut request = GenerateRequest::new("x", "gpt-image-2");
    request.options.output_format = Some(ImageFormat::Webp);
    let err = provider.generate(&request).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest, "{err}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[test]
fn settings_are_checked_and_the_standard_variables_named() {
    let check = |tweak: &dyn Fn(&mut azure_openai::Config)| {
        let mut config = azure_openai::Config {
            endpoint: "https://res.openai.azure.com".into(),
            ..azure_openai::Config::default()
        };
        tweak(&mut config);
        ProviderConfig::of(KindConfig::AzureOpenai(config)).check()
    };
    assert_eq!(check(&|_| {}), Ok(()));
    assert_eq!(check(&|c| c.endpoint.clear()).unwrap_err().key, "endpoint");
    assert_eq!(
        check(&|c| c.endpoint = "ftp://x".into()).unwrap_err().key,
        "endpoint"
    );
    let both = check(&|c| {
        c.token_file = Some("t".into());
        c.token_command = Some(vec!["az".into()]);
    });
    assert_eq!(both.unwrap_err().key, "token_command");
    assert_eq!(
        check(&|c| c.token_command = Some(vec![])).unwrap_err().key,
        "token_command"
    );
    assert_eq!(
        check(&|c| c.api_version = "x&y=1".into()).unwrap_err().key,
        "api_version"
    );
    assert_eq!(
        check(&|c| {
            c.deployments.insert("d".into(), " ".into());
        })
        .unwrap_err()
        .key,
        "deployments"
    );
    let env = KindConfig::standard_env("azure_openai");
    assert!(env.contains(&("AZURE_OPENAI_API_KEY", "api_key")));
    assert!(env.contains(&("AZURE_OPENAI_ENDPOINT", "endpoint")));
    assert!(KindConfig::KINDS.contains(&"azure_openai"));
}
