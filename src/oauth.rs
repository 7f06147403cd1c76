//! `serve --http` as an OAuth 2.1 resource server (the MCP authorization spec): JWT access
//! tokens checked against the signing keys of `server.auth.oauth.issuer`.
//!
//! The [`Verifier`] lives as long as the listener and keeps the keys (a JWKS) across requests
//! and across reloads that leave the `[server.auth.oauth]` block as it was. A token naming a
//! key it does not know fetches the keys again, at most once per `jwks_refresh_min_s`, so
//! junk tokens cannot make us hammer the authorization server; a fetch is bounded in time and
//! size, and one that fails keeps the keys we had. Only asymmetric signatures are accepted,
//! each with the algorithms its key allows: never `none`, never HMAC (whose "secret" would be
//! the public key).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::OAuthConfig;

/// The longest a fetch of the keys may take, discovery of the metadata included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest metadata document or JWKS read.
pub const MAX_DOCUMENT_BYTES: usize = 256 << 10;
/// The longest bearer token looked at: access tokens are a few KiB at most.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Keys older than this are fetched again before use, so a key the authorization server
/// withdrew stops being accepted.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// The most keys kept from one JWKS.
const MAX_KEYS: usize = 64;
/// The longest caller identity kept from `sub` or `client_id` (it goes into logs and metrics).
const MAX_IDENTITY_CHARS: usize = 128;

/// Whether a bearer token has the shape of a JWT (three dot-separated parts), and so goes to
/// OAuth when it is configured rather than to the static token table.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|b| **b == b'.').count() == 2
}

/// A token that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The caller's identity: `sub`, else `client_id`.
    pub caller: String,
}

/// Why a token was refused; no variant holds any part of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 401 `invalid_token`, with a short reason for `error_description`.
    Invalid(&'static str),
    /// 403 `insufficient_scope`: the token is valid but lacks a required scope.
    InsufficientScope,
    /// 503: no keys to check the token with (the authorization server could not be reached).
    Unavailable,
}

/// One signing key of the JWKS, with the algorithms it may verify.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

/// The keys of one `[server.auth.oauth]` block, and when they were fetched.
#[derive(Default)]
struct Cache {
    /// The block these keys are for; another block starts over.
    config: Option<OAuthConfig>,
    keys: Arc<Vec<Key>>,
    /// When keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch last started, successful or not: the rate limit counts from here.
    attempted_at: Option<Instant>,
    /// One more on every successful fetch (and reset), so a request that waited for another
    /// request's fetch sees it happened and does not fetch again.
    generation: u64,
}

/// Checks OAuth access tokens; one per listener, shared by every request.
pub struct Verifier {
    http: reqwest::Client,
    cache: Mutex<Cache>,
    /// Held while the keys are fetched: requests that need new keys wait for one fetch.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// The claims we read; `exp`, `nbf` and `aud` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: serde_json::Value,
    #[serde(default)]
    sub: serde_json::Value,
    #[serde(default)]
    client_id: serde_json::Value,
    #[serde(default)]
    scope: serde_json::Value,
    #[serde(default)]
    scp: serde_json::Value,
}

/// One entry of a JWKS, as far as we use it (RFC 7517, 7518, 8037).
#[derive(Deserialize)]
struct JwkEntry {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl JwkEntry {
    /// The key and the algorithms it may verify; `None` for keys we never verify with
    /// (encryption keys, symmetric keys, unknown curves).
    fn key(&self) -> Option<Key> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let (allowed, decoding): (Vec<Algorithm>, DecodingKey) = match self.kty.as_str() {
            "RSA" => (
                RSA_ALGORITHMS.to_vec(),
                DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?).ok()?,
            ),
            "EC" => {
                let alg = match self.crv.as_deref()? {
                    "P-256" => Algorithm::ES256,
                    "P-384" => Algorithm::ES384,
                    _ => return None,
                };
                (
                    vec![alg],
                    DecodingKey::from_ec_components(self.x.as_deref()?, self.y.as_deref()?).ok()?,
                )
            }
            "OKP" if self.crv.as_deref() == Some("Ed25519") => (
                vec![Algorithm::EdDSA],
                DecodingKey::from_ed_components(self.x.as_deref()?).ok()?,
            ),
            _ => return None,
        };
        // A key that names its algorithm verifies only that one.
        let algorithms = match self.alg.as_deref() {
            None => allowed,
            Some(name) => {
                let alg: Algorithm = name.parse().ok()?;
                if !allowed.contains(&alg) {
                    return None;
                }
                vec![alg]
            }
        };
        Some(Key {
            kid: self.kid.clone(),
            algorithms,
            decoding,
        })
    }
}

impl Verifier {
    /// A verifier with no keys yet; they are fetched when first needed (or by [`Self::prefetch`]).
    pub fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            // A redirect could take the fetch to a host the configuration never named.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("imagegen-mcp/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            cache: Mutex::default(),
            fetching: Arc::default(),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached keys for `config` and their generation; a different block than the one
    /// cached starts over with none.
    fn keys(&self, config: &OAuthConfig) -> (Arc<Vec<Key>>, u64, bool) {
        let mut cache = self.cache();
        if cache.config.as_ref() != Some(config) {
            let generation = cache.generation + 1;
            *cache = Cache {
                config: Some(config.clone()),
                generation,
                ..Cache::default()
            };
        }
        let stale = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= MAX_KEY_AGE);
        (cache.keys.clone(), cache.generation, stale)
    }

    /// Fetches the keys at start-up, so the first request does not wait and the log says at
    /// once whether the authorization server can be reached.
    pub async fn prefetch(&self, config: &OAuthConfig) {
        let (_, generation, _) = self.keys(config);
        self.refresh(config, generation).await;
    }

    /// Fetches the keys again unless another request did since `seen` (the generation the
    /// caller looked at) or the last attempt was too recent; a failure keeps the old keys.
    async fn refresh(&self, config: &OAuthConfig, seen: u64) {
        let one_fetch = self.fetching.lock().await;
        self.refresh_locked(config, seen, one_fetch).await;
    }

    /// [`Self::refresh`] in the background, for keys that are old but still hold the token's
    /// key: requests go on with them meanwhile, and none waits for a fetch already running.
    fn refresh_behind(self: &Arc<Self>, config: &OAuthConfig, seen: u64) {
        {
            let cache = self.cache();
            let min = Duration::from_secs(config.jwks_refresh_min_s);
            if cache.attempted_at.is_some_and(|at| at.elapsed() < min) {
                return;
            }
        }
        let Ok(one_fetch) = self.fetching.clone().try_lock_owned() else {
            return;
        };
        let verifier = self.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let guard = one_fetch;
            verifier.refresh_locked(&config, seen, guard).await;
        });
    }

    async fn refresh_locked<G>(&self, config: &OAuthConfig, seen: u64, _one_fetch: G) {
        {
            let mut cache = self.cache();
            if cache.config.as_ref() != Some(config) || cache.generation != seen {
                return;
            }
            let min = Duration::from_secs(config.jwks_refresh_min_s);
            if cache.attempted_at.is_some_and(|at| at.elapsed() < min) {
                return;
            }
            cache.attempted_at = Some(Instant::now());
        }
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(config)).await {
            Ok(fetched) => fetched,
            Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
        };
        match fetched {
            Ok((url, keys)) => {
                tracing::info!(
                    // Not `jwks_url=`: tests find the listener's address as `url=http://...`.
                    from = %crate::config::redacted_url(url.as_str()),
                    keys = keys.len(),
                    "fetched the authorization server's signing keys"
                );
                let mut cache = self.cache();
                if cache.config.as_ref() == Some(config) {
                    cache.keys = Arc::new(keys);
                    cache.fetched_at = Some(Instant::now());
                    cache.generation += 1;
                }
            }
            Err(e) => tracing::warn!(
                issuer = %config.issuer,
                "cannot fetch the authorization server's signing keys; keeping the keys we \
                 have: {e}"
            ),
        }
    }

    /// The JWKS URL (configured, else discovered) and the usable keys it lists.
    async fn fetch(&self, config: &OAuthConfig) -> Result<(url::Url, Vec<Key>), String> {
        let url = match &config.jwks_url {
            Some(url) => url::Url::parse(url.trim()).map_err(|_| "jwks_url is not a URL")?,
            None => self.discover(config).await?,
        };
        let jwks = self.get_json(&url).await?;
        let entries = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| format!("{url} is not a JWKS: no `keys` array"))?;
        // One key we cannot use (an encryption key, an unknown curve) must not hide the rest.
        let keys: Vec<Key> = entries
            .iter()
            .filter_map(|entry| serde_json::from_value::<JwkEntry>(entry.clone()).ok())
            .filter_map(|entry| entry.key())
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "{url} lists no signing key we can use (RSA, P-256, P-384, Ed25519)"
            ));
        }
        Ok((url, keys))
    }

    /// The issuer's `jwks_uri`, from its RFC 8414 metadata, else its OpenID Connect discovery
    /// document; each must name the configured issuer exactly.
    async fn discover(&self, config: &OAuthConfig) -> Result<url::Url, String> {
        let issuer = config.issuer.trim();
        let mut reasons = Vec::new();
        for url in metadata_urls(issuer)? {
            let document = match self.get_json(&url).await {
                Ok(document) => document,
                Err(e) => {
                    reasons.push(e);
                    continue;
                }
            };
            let named = document.get("issuer").and_then(|i| i.as_str());
            if named != Some(issuer) {
                // RFC 8414 §3.3: metadata for another issuer is not this issuer's. Its name is
                // public; showing it helps fix a trailing-slash mismatch.
                let named: String = named.unwrap_or("none").chars().take(200).collect();
                reasons.push(format!(
                    "{url} names the issuer {named:?}; server.auth.oauth.issuer must be exactly that"
                ));
                continue;
            }
            let Some(jwks) = document.get("jwks_uri").and_then(|j| j.as_str()) else {
                reasons.push(format!("{url} has no jwks_uri"));
                continue;
            };
            let jwks =
                url::Url::parse(jwks).map_err(|_| format!("{url}: jwks_uri is not a URL"))?;
            // A key URL served over plain http would let anyone on the path choose our keys.
            if jwks.scheme() != "https" && !(jwks.scheme() == "http" && is_loopback(&jwks)) {
                return Err(format!("{url}: jwks_uri is not https"));
            }
            return Ok(jwks);
        }
        Err(format!(
            "no authorization server metadata for {issuer} (set server.auth.oauth.jwks_url): {}",
            reasons.join("; ")
        ))
    }

    /// GETs `url` as JSON, refusing non-2xx answers and bodies over [`MAX_DOCUMENT_BYTES`].
    async fn get_json(&self, url: &url::Url) -> Result<serde_json::Value, String> {
        let shown = crate::config::redacted_url(url.as_str());
        let mut response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{shown}: {}", without_url(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{shown} answered {}", response.status()));
        }
        let too_big = || format!("{shown} sent more than {} KiB", MAX_DOCUMENT_BYTES >> 10);
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("{shown}: {}", without_url(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| format!("{shown} did not send JSON"))
    }

    /// Checks `token` against `config`: signature by a key of the issuer's JWKS with an
    /// algorithm that key allows, `iss`, `aud`, `exp` and `nbf` (with `leeway_s`), then the
    /// required scopes.
    pub async fn verify(
        self: &Arc<Self>,
        config: &OAuthConfig,
        token: &str,
    ) -> Result<Verified, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::Invalid("the token is too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejection::Invalid("the token is not a well-formed JWT"))?;
        if !is_asymmetric(header.alg) {
            return Err(Rejection::Invalid(
                "the token's algorithm is not accepted: only RSA, ECDSA and EdDSA signatures are",
            ));
        }
        let kid = header.kid.as_deref();
        let (mut keys, generation, stale) = self.keys(config);
        if candidates(&keys, kid, header.alg).next().is_none() {
            self.refresh(config, generation).await;
            keys = self.keys(config).0;
        } else if stale {
            self.refresh_behind(config, generation);
        }
        if keys.is_empty() {
            return Err(Rejection::Unavailable);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        validation.set_issuer(&[config.issuer.trim()]);
        validation.set_audience(&[config.audience.trim()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut outcome = Err(Rejection::Invalid(
            "the token is signed by a key the authorization server does not list",
        ));
        for key in candidates(&keys, kid, header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    outcome = Err(Rejection::Invalid(reason(e.kind())));
                    // Only a bad signature may be another key's; anything else is the token's.
                    if !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        let claims = outcome?;
        // `jsonwebtoken` would also take an `iss` array that includes ours.
        if claims.iss.as_str() != Some(config.issuer.trim()) {
            return Err(Rejection::Invalid("the token is from another issuer"));
        }
        let caller = [&claims.sub, &claims.client_id]
            .into_iter()
            .filter_map(|v| v.as_str())
            .find(|v| !v.trim().is_empty())
            .map(identity)
            .ok_or(Rejection::Invalid(
                "the token names no subject (sub or client_id)",
            ))?;
        let granted = scopes(&claims);
        if config
            .required_scopes
            .iter()
            .any(|needed| !granted.iter().any(|g| g == needed))
        {
            return Err(Rejection::InsufficientScope);
        }
        Ok(Verified { caller })
    }
}

/// The keys that may have signed a token with `kid` and `alg`: the one with that `kid`, or
/// for a token naming none, every key that allows `alg`.
fn candidates<'a>(
    keys: &'a [Key],
    kid: Option<&'a str>,
    alg: Algorithm,
) -> impl Iterator<Item = &'a Key> + 'a {
    keys.iter()
        .filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(move |k| k.algorithms.contains(&alg))
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The reason a refusal gives, in a few words that never quote the token.
fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the token has expired",
        K::ImmatureSignature => "the token is not valid yet (nbf)",
        K::InvalidAudience => "the token is not for this server (aud)",
        K::InvalidIssuer => "the token is from another issuer",
        K::InvalidSignature => "the token's signature does not verify",
        K::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the token has no expiry (exp)",
            "aud" => "the token names no audience (aud)",
            _ => "the token names no issuer (iss)",
        },
        K::InvalidAlgorithm => "the token's algorithm does not match its key",
        _ => "the token is not a well-formed JWT",
    }
}

/// The scopes a token grants: `scope` (a space-separated string, RFC 9068) or `scp` (an
/// array, or a string, as some servers send it).
fn scopes(claims: &Claims) -> Vec<String> {
    let mut out = Vec::new();
    for value in [&claims.scope, &claims.scp] {
        match value {
            serde_json::Value::String(s) => out.extend(s.split_whitespace().map(String::from)),
            serde_json::Value::Array(items) => {
                out.extend(items.iter().filter_map(|i| i.as_str()).map(String::from))
            }
            _ => {}
        }
    }
    out
}

/// A caller identity safe to log: control characters replaced, length bounded.
fn identity(raw: &str) -> String {
    raw.trim()
        .chars()
        .take(MAX_IDENTITY_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Where an issuer's metadata may be, in the order the MCP authorization spec tries them:
/// RFC 8414 (the well-known segment before the issuer's path), OpenID Connect the same way,
/// then OpenID Connect appended to the issuer's path.
fn metadata_urls(issuer: &str) -> Result<Vec<url::Url>, String> {
    let parsed = url::Url::parse(issuer).map_err(|_| "the issuer is not a URL".to_string())?;
    let path = parsed.path().trim_end_matches('/').to_string();
    let at = |suffix: String| {
        let mut url = parsed.clone();
        url.set_path(&suffix);
        url.set_query(None);
        url.set_fragment(None);
        url
    };
    let mut urls = vec![
        at(format!("/.well-known/oauth-authorization-server{path}")),
        at(format!("/.well-known/openid-configuration{path}")),
    ];
    if !path.is_empty() {
        urls.push(at(format!("{path}/.well-known/openid-configuration")));
    }
    Ok(urls)
}

/// A reqwest error's message without its URL (the URL is shown redacted beside it).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWKS server on loopback that counts its fetches and can be told to fail.
    async fn jwks_server(
        jwk: serde_json::Value,
    ) -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (count, fail) = (fetches.clone(), failing.clone());
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (count, fail) = (count.clone(), fail.clone());
                let body = serde_json::json!({ "keys": [jwk.clone()] }).to_string();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if fail.load(Ordering::SeqCst) {
                        Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                    } else {
                        Ok(body)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (base, fetches, failing)
    }

    #[tokio::test]
    async fn old_keys_are_refreshed_behind_the_requests_and_kept_when_the_fetch_fails() {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        use std::sync::atomic::Ordering;
        let b64 = |b: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        let (base, fetches, failing) = jwks_server(jwk).await;
        let config = OAuthConfig {
            issuer: base.clone(),
            audience: "aud".into(),
            jwks_url: Some(format!("{base}/jwks")),
            ..OAuthConfig::default()
        };
        let sign = |kid: &str| {
            let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600;
            let claims = serde_json::json!({"iss": base, "aud": "aud", "sub": "s", "exp": exp});
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            )
            .unwrap()
        };
        let verifier = Arc::new(Verifier::new().unwrap());
        let ok = Ok(Verified { caller: "s".into() });
        assert_eq!(verifier.verify(&config, &sign("k1")).await, ok);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // An hour later the keys are old: the request is served with them at once, and a
        // fetch runs behind it; it fails, and the keys stay.
        failing.store(true, Ordering::SeqCst);
        {
            let mut cache = verifier.cache();
            cache.fetched_at = Instant::now().checked_sub(MAX_KEY_AGE + Duration::from_secs(1));
            cache.attempted_at = cache.fetched_at;
        }
        assert_eq!(verifier.verify(&config, &sign("k1")).await, ok);
        let deadline = Instant::now() + Duration::from_secs(5);
        while fetches.load(Ordering::SeqCst) < 2 || verifier.fetching.try_lock().is_err() {
            assert!(Instant::now() < deadline, "no refresh behind the request");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(verifier.verify(&config, &sign("k1")).await, ok);
        // Within jwks_refresh_min_s of that attempt, an unknown key id fetches nothing.
        let before = fetches.load(Ordering::SeqCst);
        assert!(matches!(
            verifier.verify(&config, &sign("k2")).await,
            Err(Rejection::Invalid(_))
        ));
        assert_eq!(fetches.load(Ordering::SeqCst), before);
    }

    #[test]
    fn metadata_is_looked_for_where_rfc_8414_and_oidc_put_it() {
        let urls = |issuer: &str| -> Vec<String> {
            metadata_urls(issuer)
                .unwrap()
                .into_iter()
                .map(String::from)
                .collect()
        };
        assert_eq!(
            urls("https://auth.example.com"),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            urls("https://auth.example.com/tenant1/"),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn only_three_part_tokens_go_to_oauth() {
        assert!(looks_like_jwt(b"a.b.c"));
        assert!(looks_like_jwt(b"..")); // refused later, as malformed
        assert!(!looks_like_jwt(b"static-token"));
        assert!(!looks_like_jwt(b"a.b"));
        assert!(!looks_like_jwt(b"a.b.c.d"));
    }

    #[test]
    fn scopes_come_from_scope_or_scp_and_identities_are_tamed() {
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "scope": "images:write  images:read",
            "scp": ["extra", 7],
        }))
        .unwrap();
        assert_eq!(scopes(&claims), ["images:write", "images:read", "extra"]);
        let claims: Claims = serde_json::from_value(serde_json::json!({"scp": "a b"})).unwrap();
        assert_eq!(scopes(&claims), ["a", "b"]);
        assert_eq!(identity(" bob\n\u{1b}[31m "), "bob??[31m");
        assert_eq!(identity(&"x".repeat(1000)).len(), MAX_IDENTITY_CHARS);
    }

    #[test]
    fn keys_verify_only_the_algorithms_their_type_and_alg_allow() {
        let jwk = |value: serde_json::Value| {
            serde_json::from_value::<JwkEntry>(value)
                .unwrap()
                .key()
                .map(|k| k.algorithms)
        };
        // P-256 coordinates (any 32 bytes parse; verification would fail on a bad point).
        let xy = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        assert_eq!(
            jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": xy, "y": xy})),
            Some(vec![Algorithm::ES256])
        );
        assert_eq!(
            jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": xy, "y": xy, "alg": "RS256"})),
            None
        );
        assert_eq!(
            jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": xy, "y": xy, "use": "enc"})),
            None
        );
        assert_eq!(jwk(serde_json::json!({"kty": "oct", "k": xy})), None);
        assert_eq!(
            jwk(serde_json::json!({"kty": "RSA", "n": xy, "e": "AQAB", "alg": "RS256"})),
            Some(vec![Algorithm::RS256])
        );
        assert_eq!(
            jwk(serde_json::json!({"kty": "RSA", "n": xy, "e": "AQAB", "alg": "HS256"})),
            None
        );
    }
}
