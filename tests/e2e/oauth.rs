//! `serve --http` as an OAuth 2.1 resource server, against a fake authorization server run by
//! the test (loopback only): its metadata and JWKS are discovered, good tokens let rmcp's
//! client call tools, and every bad token (expired, not yet valid, another audience or
//! issuer, an unknown key, a missing scope, `alg: none`, HS256 forged with the public key,
//! garbage) is refused with the right status and challenge; a rotated key is fetched when a
//! token names it, and junk key ids do not make the server hammer the authorization server.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use rmcp::model::ProtocolVersion;
use serde_json::{json, Value};

use crate::http::{answer, connect, post, send, HttpServer, INITIALIZE};

/// Put in every token's claims: it must never show in the server's output.
const SENTINEL: &str = "SENTINEL-oauth-claim-5e1f";
/// The audience the server is configured for.
const AUDIENCE: &str = "https://img.example.test/mcp";
/// The scope the server requires.
const SCOPE: &str = "images:generate";
/// A static token configured beside OAuth.
const STATIC_TOKEN: &str = "static-SENTINEL-token-93b1";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key of the fake authorization server and its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    /// The committed test-only RSA key (ring cannot generate RSA keys).
    fn rsa(kid: &str) -> Self {
        let pem = include_str!("../fixtures/oauth/TEST-ONLY-rsa-2048.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let pair = RsaKeyPair::from_der(&der).unwrap();
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": b64(&public.n), "e": b64(&public.e)}),
        }
    }

    /// A fresh P-256 key, generated now.
    fn ec(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                        "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        }
    }

    /// A token signed with this key, carrying `claims`.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// What the fake authorization server serves, and what it was asked.
struct IdpState {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    /// Serve only OpenID Connect discovery (RFC 8414's document is 404).
    oidc_only: AtomicBool,
    jwks_fetches: AtomicUsize,
}

/// A fake authorization server on loopback: metadata, a JWKS, and the keys to mint tokens.
struct Idp {
    state: Arc<IdpState>,
}

impl Idp {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            oidc_only: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
        });
        fn json_answer(value: Value) -> Response {
            (
                [(header::CONTENT_TYPE, "application/json")],
                value.to_string(),
            )
                .into_response()
        }
        async fn metadata(State(s): State<Arc<IdpState>>) -> Response {
            json_answer(json!({"issuer": s.issuer, "jwks_uri": format!("{}/jwks", s.issuer)}))
        }
        async fn rfc8414(State(s): State<Arc<IdpState>>) -> Response {
            if s.oidc_only.load(Ordering::SeqCst) {
                return StatusCode::NOT_FOUND.into_response();
            }
            metadata(State(s)).await
        }
        async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
            s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys = s.keys.lock().unwrap().clone();
            json_answer(json!({ "keys": keys }))
        }
        let router = Router::new()
            .route("/.well-known/oauth-authorization-server", get(rfc8414))
            .route("/.well-known/openid-configuration", get(metadata))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { state }
    }

    fn issuer(&self) -> &str {
        &self.state.issuer
    }

    fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a good token: this issuer, our audience, valid now, the required scope.
    fn claims(&self) -> Value {
        json!({
            "iss": self.issuer(), "aud": AUDIENCE, "sub": "agent-7",
            "iat": now(), "exp": now() + 600, "scope": format!("openid {SCOPE}"),
            "note": SENTINEL,
        })
    }
}

/// `[server.auth.oauth]` for `idp`, plus `extra` lines in that table.
fn oauth_config(idp: &Idp, extra: &str) -> String {
    format!(
        "[server.auth.oauth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n\
         required_scopes = [\"{SCOPE}\"]\n{extra}\n",
        idp.issuer()
    )
}

/// A POST of `initialize` with `token`: its status and `WWW-Authenticate`.
async fn try_token(server: &HttpServer, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let answer = post(&server.mcp(), INITIALIZE, &[("authorization", &auth)]).await;
    let challenge = answer
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (answer.status().as_u16(), challenge)
}

/// `claims` with `changes` merged in (a `null` removes the claim).
fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

#[tokio::test]
async fn oauth_tokens_are_checked_for_key_issuer_audience_time_and_scope() {
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::ec("ec-1");
    let idp = Idp::start(&[&rsa, &ec]).await;
    let server = HttpServer::start_mock(
        &format!(
            "[providers.mock]\nlatency_ms = 50\n[[server.auth.tokens]]\nname = \"ci\"\n\
             token = \"{STATIC_TOKEN}\"\n{}",
            oauth_config(&idp, "")
        ),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let mut tokens = Vec::new();

    // No token: 401 pointing at the metadata, which names the authorization server.
    let missing = post(&server.mcp(), INITIALIZE, &[]).await;
    assert_eq!(missing.status(), 401);
    let challenge = missing.headers()["www-authenticate"].to_str().unwrap();
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", server.base);
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("resource_metadata=\"{metadata_url}\""))
            && challenge.contains(&format!("scope=\"{SCOPE}\"")),
        "{challenge}"
    );
    for url in [
        metadata_url.clone(),
        format!("{}/.well-known/oauth-protected-resource", server.base),
    ] {
        let document: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert_eq!(
            document,
            json!({
                "resource": format!("{}/mcp", server.base),
                "authorization_servers": [idp.issuer()],
                "scopes_supported": [SCOPE],
                "bearer_methods_supported": ["header"],
            }),
            "{url}"
        );
    }

    // A good RS256 token: rmcp's client lists the tools and generates an image.
    let good = rsa.sign(&idp.claims());
    tokens.push(good.clone());
    let (client, _) = connect(&server.mcp(), &good, ProtocolVersion::V_2026_07_28).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(
        tools.iter().any(|t| t.name == "generate_image"),
        "{tools:?}"
    );
    let result = answer(send(&client, json!({"prompt": "a kite", "size": "256x256"})).await).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    client.cancel().await.unwrap();

    // A good ES256 token with `scp` as an array and `client_id` for a subject.
    let machine = ec.sign(&with(
        idp.claims(),
        json!({"sub": null, "client_id": "batch-runner", "scope": null, "scp": [SCOPE]}),
    ));
    tokens.push(machine.clone());
    assert_eq!(try_token(&server, &machine).await.0, 200);

    // Every bad token: 401 invalid_token with a reason, and the metadata URL.
    let stranger = TestKey::ec("ec-1");
    let forged_hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let public = rsa.jwk["n"].as_str().unwrap().as_bytes();
        jsonwebtoken::encode(&header, &idp.claims(), &EncodingKey::from_secret(public)).unwrap()
    };
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(idp.claims().to_string().as_bytes())
    );
    let oversized = format!("{}.{}.{}", "a".repeat(40_000), "b".repeat(40_000), "c");
    let cases = [
        (
            "expired",
            rsa.sign(&with(idp.claims(), json!({"exp": now() - 3600}))),
            "expired",
        ),
        (
            "not yet valid",
            rsa.sign(&with(idp.claims(), json!({"nbf": now() + 3600}))),
            "not valid yet",
        ),
        (
            "another audience",
            rsa.sign(&with(
                idp.claims(),
                json!({"aud": "https://other.example/mcp"}),
            )),
            "not for this server",
        ),
        (
            "no audience",
            rsa.sign(&with(idp.claims(), json!({"aud": null}))),
            "no audience",
        ),
        (
            "another issuer",
            rsa.sign(&with(idp.claims(), json!({"iss": "https://evil.example"}))),
            "another issuer",
        ),
        (
            "an issuer list",
            rsa.sign(&with(
                idp.claims(),
                json!({"iss": [idp.issuer(), "https://evil.example"]}),
            )),
            "issuer",
        ),
        (
            "a key not in the JWKS",
            stranger.sign(&idp.claims()),
            "signature",
        ),
        (
            "HS256 forged with the public key",
            forged_hs256,
            "algorithm",
        ),
        ("alg none", unsigned, "well-formed"),
        ("garbage", "abc.def.ghi".to_string(), "well-formed"),
        ("oversized", oversized, "too long"),
        (
            "no subject",
            rsa.sign(&with(idp.claims(), json!({"sub": null}))),
            "no subject",
        ),
    ];
    for (case, token, reason) in cases {
        let (status, challenge) = try_token(&server, &token).await;
        assert_eq!(status, 401, "{case}: {challenge}");
        assert!(
            challenge.contains("error=\"invalid_token\"")
                && challenge.contains(reason)
                && challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
            "{case}: {challenge}"
        );
        tokens.push(token);
    }

    // A valid token without the scope: 403 naming the scope it needs.
    let unscoped = rsa.sign(&with(idp.claims(), json!({"scope": "openid"})));
    let (status, challenge) = try_token(&server, &unscoped).await;
    assert_eq!(status, 403, "{challenge}");
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains(&format!("scope=\"{SCOPE}\"")),
        "{challenge}"
    );
    tokens.push(unscoped);

    // Junk key ids do not make the server fetch the keys on every request.
    let before = idp.jwks_fetches();
    for i in 0..5 {
        let junk = TestKey::ec(&format!("junk-{i}"));
        assert_eq!(try_token(&server, &junk.sign(&idp.claims())).await.0, 401);
    }
    assert!(
        idp.jwks_fetches() - before <= 1,
        "{} fetches for 5 junk key ids",
        idp.jwks_fetches() - before
    );

    // The static token still works beside OAuth; a wrong one is told where OAuth is.
    assert_eq!(try_token(&server, STATIC_TOKEN).await.0, 200);
    let (status, challenge) = try_token(&server, "not-a-jwt").await;
    assert_eq!(status, 401);
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    let output = server.output();
    assert!(output.contains("caller=agent-7"), "{output}");
    assert!(output.contains("caller=batch-runner"), "{output}");
    assert!(
        !output.contains("SENTINEL"),
        "a token or claim leaked:\n{output}"
    );
    for token in &tokens {
        // Each part on its own: a signature or payload logged alone is as bad.
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!output.contains(part), "a token part leaked:\n{output}");
        }
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let old = TestKey::ec("2026-01");
    let new = TestKey::ec("2026-02");
    let idp = Idp::start(&[&old]).await;
    // Only OpenID Connect discovery: the RFC 8414 document is missing.
    idp.state.oidc_only.store(true, Ordering::SeqCst);
    let server = HttpServer::start_mock(&oauth_config(&idp, "jwks_refresh_min_s = 0"), &[]).await;

    assert_eq!(try_token(&server, &old.sign(&idp.claims())).await.0, 200);
    let (status, challenge) = try_token(&server, &new.sign(&idp.claims())).await;
    assert_eq!(status, 401, "a key the JWKS does not list yet: {challenge}");

    // The authorization server rotates: the new key replaces the old one.
    *idp.state.keys.lock().unwrap() = vec![new.jwk.clone()];
    let fetches = idp.jwks_fetches();
    assert_eq!(
        try_token(&server, &new.sign(&idp.claims())).await.0,
        200,
        "{}",
        server.output()
    );
    assert_eq!(
        idp.jwks_fetches(),
        fetches + 1,
        "one fetch for the new key id"
    );
    // The old key went with the fetch that brought the new one.
    assert_eq!(try_token(&server, &old.sign(&idp.claims())).await.0, 401);

    // A reload that leaves [server.auth.oauth] as it was keeps the keys: no fetch.
    let file = server.home.path().join("imagegen.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("[batch]\nmax_items = 8\n");
    std::fs::write(&file, text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.output().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", server.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetches = idp.jwks_fetches();
    assert_eq!(try_token(&server, &new.sign(&idp.claims())).await.0, 200);
    assert_eq!(
        idp.jwks_fetches(),
        fetches,
        "the keys were fetched again after a reload"
    );
    let output = server.output();
    assert!(
        output.contains("fetched the authorization server's signing keys"),
        "{output}"
    );
}

#[tokio::test]
async fn an_unreachable_authorization_server_gives_503_not_an_open_door() {
    // A port nobody listens on: the prefetch and the request's own fetch both fail.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = HttpServer::start_mock(
        &format!(
            "[server.auth.oauth]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n\
             jwks_refresh_min_s = 0\n"
        ),
        &[],
    )
    .await;
    let key = TestKey::ec("k");
    let token = key.sign(&json!({"iss": issuer, "aud": AUDIENCE, "sub": "x", "exp": now() + 60}));
    let answer = post(
        &server.mcp(),
        INITIALIZE,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status(), 503, "{}", server.output());
    assert_eq!(answer.headers()["retry-after"], "10");
    assert!(
        server
            .output()
            .contains("cannot fetch the authorization server's signing keys"),
        "{}",
        server.output()
    );
}

#[test]
fn oauth_settings_are_checked_at_load() {
    use imagegen_mcp::config::{CliOverrides, LoadedConfig};
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| crate::common::load_config_in(dir.path(), text);
    let ok = load(
        "[server.http]\npublic_url = \"https://img.example.com/\"\n\
         [server.auth.oauth]\nissuer = \"https://auth.example.com\"\naudience = \"https://img.example.com/mcp\"\n",
    )
    .unwrap();
    let oauth = ok.config.server.auth.oauth.as_ref().unwrap();
    assert_eq!((oauth.leeway_s, oauth.jwks_refresh_min_s), (60, 10));
    assert!(
        load("[server.auth.oauth]\nissuer = \"http://127.0.0.1:9\"\naudience = \"a\"\n").is_ok()
    );
    // The example file's commented OAuth settings load as they are once uncommented.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/imagegen.example.toml"
    ))
    .unwrap();
    let uncommented: String = example
        .lines()
        .map(|line| {
            let oauth = [
                "[server.auth.oauth]",
                "issuer =",
                "audience =",
                "required_scopes =",
                "jwks_url =",
                "leeway_s =",
                "jwks_refresh_min_s =",
                "public_url =",
            ];
            match line.strip_prefix("# ") {
                Some(rest) if oauth.iter().any(|p| rest.starts_with(p)) => rest,
                _ => line,
            }
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    assert!(
        uncommented.contains("\n[server.auth.oauth]"),
        "{uncommented}"
    );
    let file = dir.path().join("example.toml");
    std::fs::write(&file, uncommented).unwrap();
    let cli = CliOverrides {
        config: Some(file),
        ..CliOverrides::default()
    };
    let example = LoadedConfig::load_from(
        &cli,
        [
            ("HOME", dir.path().to_str().unwrap()),
            ("OPENAI_API_KEY", "sk-dummy-0000abcd"),
        ],
        dir.path(),
    )
    .unwrap();
    let oauth = example.config.server.auth.oauth.unwrap();
    assert_eq!(oauth.required_scopes, ["images:generate"]);
    assert_eq!(
        example.config.server.http.public_url.as_deref(),
        Some("https://img.example.com")
    );

    for (config, says) in [
        ("[server.auth.oauth]\naudience = \"a\"\n", "`server.auth.oauth.issuer`"),
        (
            "[server.auth.oauth]\nissuer = \"http://auth.example.com\"\naudience = \"a\"\n",
            "must be an https:// URL",
        ),
        ("[server.auth.oauth]\nissuer = \"not a url\"\naudience = \"a\"\n", "is not a URL"),
        (
            "[server.auth.oauth]\nissuer = \"https://auth.example.com\"\n",
            "has no default",
        ),
        (
            "[server.auth.oauth]\nissuer = \"https://a.example\"\naudience = \"a\"\njwks_url = \"http://a.example/jwks\"\n",
            "`server.auth.oauth.jwks_url`",
        ),
        (
            "[server.auth.oauth]\nissuer = \"https://a.example\"\naudience = \"a\"\nrequired_scopes = [\"a b\"]\n",
            "required_scopes",
        ),
        (
            "[server.auth.oauth]\nissuer = \"https://a.example\"\naudience = \"a\"\nleeway_s = 7200\n",
            "leeway_s",
        ),
        (
            "[server.auth.oauth]\nissuer = \"https://a.example\"\naudience = \"a\"\nsecret = \"x\"\n",
            "secret",
        ),
        ("[server.http]\npublic_url = \"img.example.com\"\n", "public_url"),
    ] {
        let error = load(config).unwrap_err().to_string();
        assert!(error.contains(says), "{config}: {error}");
    }
}
