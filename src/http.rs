//! `imagegen-mcp serve --http`: rmcp's streamable HTTP service at `/mcp`, behind bearer-token
//! authentication and a body cap, with `/healthz`, `/readyz`, `/metrics` and a graceful
//! shutdown.
//!
//! Both protocol revisions are served: 2025-11-25 clients get sessions (`initialize`,
//! `Mcp-Session-Id`), 2026-07-28 requests are stateless and may land on any replica. Every
//! request reads the live configuration once, so a rotated token works (and the old one
//! stops) as soon as the reload that read it is published.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use futures::StreamExt as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    live::Live,
    oauth::{Rejection, Verifier},
    server::{status_output, Calls, ImagegenServer},
};

/// The caller of one HTTP request: the name of the token it presented, or [`ANONYMOUS`]. The
/// guard puts it in the request's extensions, where tool calls find it for their logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The id of one HTTP request: the client's `X-Request-Id` when it is sane, else one made
/// here. It is in the request's logs (and those of the tool call it carries) and echoed in
/// the response's `X-Request-Id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The header a request id comes in and goes back out in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client request id kept; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The caller name of requests served without a token (a loopback listener with no tokens,
/// or `server.auth.allow_unauthenticated`).
pub const ANONYMOUS: &str = "anonymous";

/// What the guard and the probes share.
struct Shared {
    live: Arc<Live>,
    /// Set on SIGTERM/SIGINT: `/readyz` says 503 and `/mcp` takes no new requests.
    shutting_down: AtomicBool,
    /// Whether the listener is on a loopback address, where no tokens means open to local
    /// callers only.
    loopback: bool,
    /// Checks OAuth access tokens and keeps the authorization server's keys.
    verifier: Arc<Verifier>,
    /// `server.http.public_url` (else `http://<bound address>`), without a trailing `/`: the
    /// base of the resource and metadata URLs OAuth clients are given.
    public_url: String,
    /// `server.http.max_body_mb` in bytes, as the listener was started with.
    max_body: usize,
    /// Renders `GET /metrics`; `None` when another recorder was installed first.
    metrics: Option<PrometheusHandle>,
    /// `/mcp` POSTs whose answer is not yet sent: a call's result still on its way to the
    /// client after the tool returned keeps the drain waiting.
    posts: Arc<Calls>,
    /// The tool calls running, for the gauge a scrape reads.
    calls: Arc<Calls>,
    /// Which caller opened each 2025-11-25 session, so no other caller can use its id.
    sessions: SessionOwners,
    /// The web gallery's state (`/gallery`).
    gallery: Arc<crate::gallery::web::Gallery>,
}

/// The header naming a 2025-11-25 session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Session ids bound to their callers; the spec asks servers to tie a session to the user
/// who opened it, and rmcp's session manager knows nothing of callers.
#[derive(Default)]
struct SessionOwners(std::sync::Mutex<SessionTable>);

/// The newest [`SessionOwners::MAX`] bindings, oldest first in `order`.
#[derive(Default)]
struct SessionTable {
    owners: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl SessionOwners {
    /// Bindings kept: a session older than the newest this many still needs its unguessable
    /// id, but is no longer tied to its caller.
    const MAX: usize = 10_000;

    fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `caller` may use session `id`: it opened it, or nobody is known to have.
    fn may_use(&self, id: &str, caller: &str) -> bool {
        self.table()
            .owners
            .get(id)
            .is_none_or(|owner| owner == caller)
    }

    fn bind(&self, id: &str, caller: &str) {
        let mut table = self.table();
        if table
            .owners
            .insert(id.to_string(), caller.to_string())
            .is_none()
        {
            table.order.push_back(id.to_string());
        }
        while table.order.len() > Self::MAX {
            if let Some(old) = table.order.pop_front() {
                table.owners.remove(&old);
            }
        }
    }

    fn forget(&self, id: &str) {
        let mut table = self.table();
        if table.owners.remove(id).is_some() {
            table.order.retain(|kept| kept != id);
        }
    }
}

/// Why the listener may not start: a non-loopback address with nobody to authenticate
/// (no static tokens and no `[server.auth.oauth]`).
pub fn check_exposure(
    addr: SocketAddr,
    tokens: usize,
    oauth: bool,
    allow_unauthenticated: bool,
) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || tokens > 0 || oauth || allow_unauthenticated {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {addr} without authentication: it is not a loopback address, so \
         anyone who can reach it could call the tools (and spend the providers' credit). \
         Configure [[server.auth.tokens]] or [server.auth.oauth], or set \
         server.auth.allow_unauthenticated = true to serve it open on purpose"
    )
}

/// The `Host` values the DNS-rebinding guard accepts: the loopback names, the bound address
/// (unless it is the unspecified `0.0.0.0` or `::`), and `server.http.allowed_hosts`.
fn allowed_hosts(bound: SocketAddr, configured: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    if !bound.ip().is_unspecified() {
        hosts.push(bound.ip().to_string());
    }
    hosts.extend(configured.iter().cloned());
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Serves MCP over streamable HTTP on `bind` (else `server.http.bind`) until SIGTERM or
/// SIGINT, then drains: `/readyz` says 503, `/mcp` takes no new requests, calls in flight
/// finish within `server.shutdown_grace_s`, and the function returns.
pub async fn serve(
    live: Arc<Live>,
    server: ImagegenServer,
    bind: Option<String>,
) -> anyhow::Result<()> {
    let snapshot = live.snapshot();
    let settings = snapshot.loaded.config.server.clone();
    let bind = bind
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| settings.http.bind.clone());
    let addr: SocketAddr = bind.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "`{bind}` is not an address to listen on: use IP:PORT, such as 127.0.0.1:8787 \
             (--http ADDR or server.http.bind)"
        )
    })?;
    check_exposure(
        addr,
        snapshot.loaded.tokens().len(),
        settings.auth.oauth.is_some(),
        settings.auth.allow_unauthenticated,
    )?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let max_body = usize::try_from(settings.http.max_body_mb)
        .unwrap_or(usize::MAX)
        .saturating_mul(1 << 20);
    let hosts = allowed_hosts(local, &settings.http.allowed_hosts);
    if addr.ip().is_unspecified() && settings.http.allowed_hosts.is_empty() {
        tracing::warn!(
            "listening on every address, but only loopback Host names are accepted: list the \
             names clients use in server.http.allowed_hosts"
        );
    }
    let sessions_ct = CancellationToken::new();
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts.clone())
        .with_allowed_origins(settings.http.allowed_origins.clone())
        // With no allowed origins, a request that names any Origin is refused: browsers name
        // one, and no browser page was allowed. Clients that are not browsers send none.
        .enforce_origin_validation()
        .with_max_request_body_bytes(max_body)
        .with_cancellation_token(sessions_ct.child_token());
    let calls = server.calls();
    let service: StreamableHttpService<ImagegenServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
    let metrics = crate::telemetry::install();
    let public_url = public_url(settings.http.public_url.as_deref(), local);
    if let Some(oauth) = &settings.auth.oauth {
        check_oauth_urls(
            oauth,
            &public_url,
            settings.http.public_url.is_some(),
            local,
        );
    }
    let secure = public_url.starts_with("https://");
    let shared = Arc::new(Shared {
        live: live.clone(),
        shutting_down: AtomicBool::new(false),
        loopback: addr.ip().is_loopback(),
        verifier: Arc::new(Verifier::new().context("cannot set up the OAuth key fetcher")?),
        public_url,
        max_body,
        metrics,
        posts: Arc::default(),
        sessions: SessionOwners::default(),
        calls: calls.clone(),
        gallery: Arc::new(crate::gallery::web::Gallery {
            live: live.clone(),
            secure,
            hosts,
        }),
    });
    // `/metrics` takes the same tokens as `/mcp` (its labels name providers and callers), or
    // only `server.metrics.token_file`'s when that is set.
    let scrape = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(shared.clone())
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            metrics_guard,
        ));
    let mcp = Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(shared.clone(), guard));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // RFC 9728: at the root, and with the resource's path (`/mcp`) appended.
        .route(PRM_PATH, get(protected_resource))
        .route(&format!("{PRM_PATH}/mcp"), get(protected_resource))
        .with_state(shared.clone())
        .merge(scrape)
        .merge(mcp)
        .merge(crate::gallery::web::routes(shared.gallery.clone()).layer(
            middleware::from_fn_with_state(shared.clone(), gallery_guard),
        ))
        .merge(crate::gallery::web::public_routes(shared.gallery.clone()))
        .layer(middleware::from_fn(request_context));
    drop(snapshot);
    if let Some(oauth) = settings.auth.oauth.clone() {
        let shared = shared.clone();
        tokio::spawn(async move { shared.verifier.prefetch(&oauth).await });
    }

    // Before the URL is logged: whoever starts the server may stop it as soon as it is known.
    let stop_signal = shutdown_signal();
    let stop_accepting = CancellationToken::new();
    let serving = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
    let mut serving = tokio::spawn(async move { serving.await });
    // On every address, the URL to show is one that works from here: loopback, which the
    // Host check always accepts.
    let reachable = match local.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, local.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
        }
        _ => local,
    };
    tracing::info!(
        url = %format!("http://{reachable}/mcp"),
        listening = %local,
        tokens = live.snapshot().loaded.tokens().len(),
        "serving MCP over streamable HTTP"
    );

    tokio::select! {
        done = &mut serving => {
            return match done {
                Ok(result) => result.context("the HTTP server stopped"),
                Err(e) => Err(anyhow::anyhow!("the HTTP server failed: {e}")),
            };
        }
        signal = stop_signal => {
            let grace = Duration::from_secs(live.snapshot().loaded.config.server.shutdown_grace_s);
            tracing::info!(
                signal,
                in_flight = calls.in_flight(),
                grace_s = grace.as_secs(),
                "shutting down: no new requests; calls in flight may finish"
            );
            // The listener stays up while calls drain, so probes see 503 rather than a refused
            // connection and a load balancer takes the replica out of rotation.
            shared.shutting_down.store(true, Ordering::SeqCst);
            let drained = async {
                calls.idle().await;
                shared.posts.idle().await;
            };
            if tokio::time::timeout(grace, drained).await.is_err() {
                tracing::warn!(
                    in_flight = calls.in_flight(),
                    "shutdown grace ran out; cancelling the calls still running"
                );
            }
        }
    }
    // Ends the sessions and their open streams, which would otherwise hold the connections.
    stop_accepting.cancel();
    sessions_ct.cancel();
    if tokio::time::timeout(Duration::from_secs(5), &mut serving)
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the sessions ended; closing them");
        serving.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Listens for SIGTERM and SIGINT from the moment it is called (a signal before that would
/// kill the process outright), and resolves with the name of the first to arrive.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match signals {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                _ => {
                    tracing::warn!("cannot listen for SIGTERM; stopping on Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    "SIGINT"
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// `GET /metrics`: the metrics of [`crate::telemetry`] in the Prometheus text format.
async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let Some(handle) = &shared.metrics else {
        return plain(StatusCode::NOT_FOUND, "metrics are off\n");
    };
    crate::telemetry::refresh(&shared.live, shared.calls.in_flight());
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// `GET /healthz`: the process is alive and answering.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the configuration is loaded and at least one provider can take a
/// call (its circuit is not open and not all its keys are disabled); 503 otherwise, and from
/// the moment a shutdown begins.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutting_down.load(Ordering::SeqCst) {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let status = status_output(&shared.live);
    let usable: Vec<&str> = status
        .providers
        .iter()
        .filter(|p| {
            p.health.state != "open"
                && (p.keys.is_empty() || p.keys.iter().any(|k| k.state != "disabled"))
        })
        .map(|p| p.name.as_str())
        .collect();
    let body = serde_json::json!({
        "ready": !usable.is_empty(),
        "generation": status.config.generation,
        "usable_providers": usable,
    });
    let code = if usable.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Where OAuth clients learn how to get a token for this server (RFC 9728).
const PRM_PATH: &str = "/.well-known/oauth-protected-resource";

/// The base URL clients reach the server at: `server.http.public_url`, else the bound address.
fn public_url(configured: Option<&str>, bound: SocketAddr) -> String {
    // Serialized by `url`, the URL is ASCII with quotes escaped: safe inside a header value.
    match configured.and_then(|url| url::Url::parse(url.trim()).ok()) {
        Some(url) => url.as_str().trim_end_matches('/').to_string(),
        None => format!("http://{bound}"),
    }
}

/// Start-up warnings for OAuth settings that would make every client fail in ways that are
/// hard to trace from the client side.
fn check_oauth_urls(
    oauth: &crate::config::OAuthConfig,
    public_url: &str,
    configured: bool,
    bound: SocketAddr,
) {
    let resource = format!("{public_url}/mcp");
    if !configured && bound.ip().is_unspecified() {
        tracing::warn!(
            "server.auth.oauth is set but server.http.public_url is not: clients are pointed at \
             {resource}, which they cannot reach; set it to the URL clients use"
        );
    }
    if oauth.audience.trim() != resource {
        tracing::info!(
            audience = %oauth.audience.trim(),
            resource,
            "server.auth.oauth.audience is not this server's resource URL: MCP clients ask for \
             tokens for the resource URL (RFC 8707), so the authorization server must put the \
             audience in them"
        );
    }
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: the Protected Resource Metadata (RFC
/// 9728) naming the authorization server; 404 when OAuth is not configured.
async fn protected_resource(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.live.snapshot();
    let Some(oauth) = &snapshot.loaded.config.server.auth.oauth else {
        return plain(
            StatusCode::NOT_FOUND,
            "Not Found: OAuth is not configured ([server.auth.oauth])\n",
        );
    };
    let mut document = serde_json::json!({
        "resource": format!("{}/mcp", shared.public_url),
        "authorization_servers": [oauth.issuer.trim()],
        "bearer_methods_supported": ["header"],
    });
    if !oauth.required_scopes.is_empty() {
        document["scopes_supported"] = serde_json::json!(oauth.required_scopes);
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Public metadata, fetched by browser-based clients from their own origin.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        format!("{document}\n"),
    )
        .into_response()
}

/// What a refusal tells the client about authenticating: RFC 6750's challenge, with the
/// metadata URL and scopes of RFC 9728 when OAuth is configured.
struct Challenge {
    /// `<public_url>/.well-known/oauth-protected-resource/mcp`, when OAuth is configured.
    resource_metadata: Option<String>,
    /// The scopes a token needs, space-separated (empty: none).
    scope: String,
}

impl Challenge {
    fn new(shared: &Shared, oauth: Option<&crate::config::OAuthConfig>) -> Self {
        Self {
            resource_metadata: oauth.map(|_| format!("{}{PRM_PATH}/mcp", shared.public_url)),
            scope: oauth.map_or_else(String::new, |o| o.required_scopes.join(" ")),
        }
    }

    /// The `WWW-Authenticate` value; `error` and `description` are fixed texts of ours (no
    /// quotes, no part of any token).
    fn header(&self, error: Option<&str>, description: Option<&str>) -> Option<HeaderValue> {
        let mut params = vec!["realm=\"imagegen-mcp\"".to_string()];
        if let Some(error) = error {
            params.push(format!("error=\"{error}\""));
        }
        if let Some(description) = description {
            params.push(format!("error_description=\"{description}\""));
        }
        if !self.scope.is_empty() {
            params.push(format!("scope=\"{}\"", self.scope));
        }
        if let Some(url) = &self.resource_metadata {
            params.push(format!("resource_metadata=\"{url}\""));
        }
        HeaderValue::from_str(&format!("Bearer {}", params.join(", "))).ok()
    }

    /// 401; `error` says a token was presented but is not one we accept, `description` why.
    fn unauthorized(&self, error: Option<&str>, description: Option<&str>) -> Response {
        let body = if self.resource_metadata.is_some() {
            "Unauthorized: send Authorization: Bearer <token>, an OAuth access token (see \
             WWW-Authenticate: resource_metadata) or a token from [[server.auth.tokens]]\n"
        } else {
            "Unauthorized: send Authorization: Bearer <token> with a token from [[server.auth.tokens]]\n"
        };
        let mut response = plain(StatusCode::UNAUTHORIZED, body);
        if let Some(value) = self.header(error, description) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// 403 `insufficient_scope`, naming the scopes a token needs.
    fn forbidden(&self) -> Response {
        let mut response = plain(
            StatusCode::FORBIDDEN,
            "Forbidden: the access token lacks a scope this server requires (see \
             WWW-Authenticate: scope)\n",
        );
        if let Some(value) = self.header(
            Some("insufficient_scope"),
            Some("the token lacks a required scope"),
        ) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The caller of a request, from its bearer token (a static token, or an OAuth access token
/// when the token is a JWT and OAuth is configured), or the refusal to send.
async fn authenticate(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<String, Response> {
    let snapshot = shared.live.snapshot();
    let loaded = &snapshot.loaded;
    let oauth = loaded.config.server.auth.oauth.clone();
    let challenge = Challenge::new(shared, oauth.as_ref());
    if loaded.tokens().is_empty() && oauth.is_none() {
        // No tokens: open on loopback or when explicitly allowed; a network listener whose
        // tokens were all removed by a reload stays closed rather than turning open.
        if shared.loopback || loaded.config.server.auth.allow_unauthenticated {
            return Ok(ANONYMOUS.to_string());
        }
        tracing::warn!(%peer, "refused a request: no tokens are configured any more");
        return Err(challenge.unauthorized(None, None));
    }
    let Some(token) = bearer(headers) else {
        tracing::warn!(%peer, "refused a request without a bearer token");
        return Err(challenge.unauthorized(None, None));
    };
    match oauth {
        Some(oauth) if crate::oauth::looks_like_jwt(token) => {
            drop(snapshot);
            let Ok(token) = std::str::from_utf8(token) else {
                return Err(challenge.unauthorized(
                    Some("invalid_token"),
                    Some("the token is not a well-formed JWT"),
                ));
            };
            match shared.verifier.verify(&oauth, token).await {
                Ok(verified) => Ok(verified.caller),
                Err(Rejection::Invalid(reason)) => {
                    tracing::warn!(%peer, reason, "refused an OAuth access token");
                    Err(challenge.unauthorized(Some("invalid_token"), Some(reason)))
                }
                Err(Rejection::InsufficientScope) => {
                    tracing::warn!(%peer, "refused an OAuth access token without a required scope");
                    Err(challenge.forbidden())
                }
                Err(Rejection::Unavailable) => {
                    tracing::warn!(
                        %peer,
                        "refused an OAuth access token: the authorization server's keys cannot be fetched"
                    );
                    let mut response = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable: the authorization server's signing keys cannot be \
                         fetched, so no access token can be checked; try again shortly\n",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                    Err(response)
                }
            }
        }
        _ => {
            let digest: [u8; 32] = Sha256::digest(token).into();
            match loaded.caller_of(&digest) {
                Some(name) => Ok(name.to_string()),
                None => {
                    tracing::warn!(%peer, "refused a request with an unknown bearer token");
                    Err(challenge.unauthorized(
                        Some("invalid_token"),
                        Some("the token is not one this server accepts"),
                    ))
                }
            }
        }
    }
}

/// 413 naming the setting that would let the request through.
fn too_large(max_body: usize) -> Response {
    let mb = max_body >> 20;
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "Payload Too Large: the request body is over {mb} MiB (server.http.max_body_mb = \
             {mb}); send large images by path or imagegen:// URI, or raise the setting\n"
        ),
    )
        .into_response()
}

/// The token of an `Authorization: Bearer ...` header, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(token.trim_ascii()).filter(|t| !t.is_empty())
}

/// In front of `/mcp` and `/metrics`: refuses new MCP requests while shutting down, bodies over the cap, and
/// callers without a valid token; names the caller for the request and its logs.
async fn guard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    // Scrapes go on while calls drain; only new MCP requests are refused.
    if shared.shutting_down.load(Ordering::SeqCst) && request.uri().path() == "/mcp" {
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: shutting down\n",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > shared.max_body as u64) {
        tracing::warn!(%peer, bytes = declared, "refused a request body over server.http.max_body_mb");
        return too_large(shared.max_body);
    }
    let caller = {
        match authenticate(&shared, peer, request.headers()).await {
            Ok(caller) => caller,
            Err(refusal) => return refusal,
        }
    };
    // The request's span (see `request_context`) names the caller from here on.
    tracing::Span::current().record("caller", tracing::field::display(&caller));
    tracing::debug!(%peer, caller, method = %request.method(), "MCP request");
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &session {
        if !shared.sessions.may_use(id, &caller) {
            // As for a session that does not exist: another caller's id is not confirmed.
            tracing::warn!(%peer, caller, "refused a request naming another caller's session");
            return plain(StatusCode::NOT_FOUND, "Not Found: no such session\n");
        }
    }
    let method = request.method().clone();
    request.extensions_mut().insert(Caller(caller.clone()));
    // A POST carries a request (or a client's answer): it counts until its answer is sent or
    // the client goes away. GET streams stay open for the session and do not count.
    let post = (request.method() == axum::http::Method::POST).then(|| shared.posts.start());
    let mut response = next.run(request).await;
    if method == axum::http::Method::DELETE && response.status() == StatusCode::ACCEPTED {
        // rmcp answers a closed session 202; the Python SDK reads anything but 200 or 204
        // as "session termination failed".
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    match (&session, response.headers().get(SESSION_HEADER)) {
        (None, Some(opened)) if response.status().is_success() => {
            if let Ok(id) = opened.to_str() {
                shared.sessions.bind(id, &caller);
            }
        }
        (Some(id), _) if method == axum::http::Method::DELETE => shared.sessions.forget(id),
        _ => {}
    }
    // rmcp's own refusal of a streamed body over the cap does not name the setting.
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(%peer, caller, "refused a request body over server.http.max_body_mb");
        return too_large(shared.max_body);
    }
    match post {
        Some(running) => {
            let (parts, body) = response.into_parts();
            let stream = body.into_data_stream().map(move |chunk| {
                // The stream owns the guard: it is dropped when the body ends or is dropped.
                let _ = &running;
                chunk
            });
            Response::from_parts(parts, axum::body::Body::from_stream(stream))
        }
        None => response,
    }
}

/// In front of the gallery's pages: the caller of a valid login cookie, else of the request's
/// token as for `/mcp`; a request with neither gets the login page (401).
async fn gallery_guard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    if !shared.gallery.host_allowed(request.headers()) {
        return crate::gallery::web::wrong_host();
    }
    let caller = match shared.gallery.cookie_caller(request.headers()) {
        Some(caller) => caller,
        None => match authenticate(&shared, peer, request.headers()).await {
            Ok(caller) => caller,
            Err(refusal) => return crate::gallery::web::refused(refusal),
        },
    };
    tracing::Span::current().record("caller", tracing::field::display(&caller));
    request.extensions_mut().insert(Caller(caller));
    next.run(request).await
}

/// The client's request id when it is sane (1 to [`MAX_REQUEST_ID`] visible ASCII
/// characters, nothing a log line could be confused by), else a new random one.
fn request_id_of(headers: &HeaderMap) -> RequestId {
    let given = headers
        .get(REQUEST_ID_HEADER)
        .map(HeaderValue::as_bytes)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID)
        .filter(|id| {
            id.iter()
                .all(|b| b.is_ascii_graphic() && !b"\"\\".contains(b))
        })
        .and_then(|id| std::str::from_utf8(id).ok());
    RequestId(match given {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    })
}

/// Around every request: gives it a request id (in its extensions, its span and the
/// response's `X-Request-Id`) and a span the guard adds the caller to.
async fn request_context(mut request: Request, next: Next) -> Response {
    let id = request_id_of(request.headers());
    let span = tracing::info_span!(
        "http",
        request_id = %id.0,
        caller = tracing::field::Empty
    );
    let echoed = HeaderValue::from_str(&id.0).ok();
    request.extensions_mut().insert(id);
    let mut response = next.run(request).instrument(span).await;
    if let Some(value) = echoed {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// In front of `/metrics`: with `server.metrics.token_file` set, only that token may scrape
/// (the `/mcp` tokens are refused); without it, the same checks as `/mcp`.
async fn metrics_guard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = {
        let snapshot = shared.live.snapshot();
        let loaded = &snapshot.loaded;
        if !loaded.has_metrics_token() {
            None
        } else {
            let presented = bearer(request.headers()).map(|t| Sha256::digest(t).into());
            Some(presented.map(|digest: [u8; 32]| loaded.is_metrics_token(&digest)))
        }
    };
    match allowed {
        None => guard(State(shared), ConnectInfo(peer), request, next).await,
        Some(Some(true)) => {
            tracing::Span::current().record("caller", "metrics");
            next.run(request).await
        }
        Some(presented) => {
            tracing::warn!(%peer, "refused a scrape without the metrics token");
            // The metrics token is a static one: no OAuth metadata in its challenge.
            Challenge::new(&shared, None).unauthorized(presented.map(|_| "invalid_token"), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        let mut headers = HeaderMap::new();
        let made = request_id_of(&headers).0;
        assert_eq!(made.len(), 32, "{made}");
        assert_ne!(made, request_id_of(&headers).0, "ids are not reused");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-42.a_b:c"));
        assert_eq!(request_id_of(&headers).0, "req-42.a_b:c");
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for hostile in ["has space", "quote\"", "", long.as_str(), "back\\slash"] {
            headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(hostile).unwrap());
            let id = request_id_of(&headers).0;
            assert!(id != hostile && id.len() == 32, "{hostile:?} -> {id}");
        }
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(request_id_of(&headers).0.len(), 32);
    }

    #[test]
    fn the_public_url_is_normalized_and_defaults_to_the_bound_address() {
        let bound: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        assert_eq!(public_url(None, bound), "http://127.0.0.1:8787");
        assert_eq!(
            public_url(Some(" https://IMG.example.com/ "), bound),
            "https://img.example.com"
        );
        assert_eq!(
            public_url(Some("https://img.example.com/a \"b\"/ü"), bound),
            "https://img.example.com/a%20%22b%22/%C3%BC"
        );
    }

    #[test]
    fn a_session_is_its_opener_s_and_the_table_stays_bounded() {
        let owners = SessionOwners::default();
        assert!(
            owners.may_use("s1", "bob"),
            "unknown sessions are rmcp's to refuse"
        );
        owners.bind("s1", "alice");
        assert!(owners.may_use("s1", "alice"));
        assert!(!owners.may_use("s1", "bob"));
        owners.forget("s1");
        assert!(owners.may_use("s1", "bob"));
        for n in 0..=SessionOwners::MAX {
            owners.bind(&format!("s{n}"), "alice");
        }
        let table = owners.table();
        assert_eq!(table.owners.len(), SessionOwners::MAX);
        assert_eq!(table.order.len(), SessionOwners::MAX);
        assert!(
            !table.owners.contains_key("s0"),
            "the oldest binding goes first"
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        for (value, token) in [
            ("Bearer abc", Some(&b"abc"[..])),
            ("bearer   abc  ", Some(b"abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer    ", None),
            ("Bearerabc", None),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&headers), token, "{value}");
        }
    }

    #[test]
    fn only_loopback_listeners_may_start_without_authentication() {
        let open = |addr: &str, tokens, allow| {
            check_exposure(addr.parse().unwrap(), tokens, false, allow).is_ok()
        };
        assert!(open("127.0.0.1:8787", 0, false));
        assert!(open("[::1]:8787", 0, false));
        assert!(open("0.0.0.0:8787", 1, false));
        assert!(open("0.0.0.0:8787", 0, true));
        assert!(check_exposure("0.0.0.0:8787".parse().unwrap(), 0, true, false).is_ok());
        let refused = check_exposure("0.0.0.0:8787".parse().unwrap(), 0, false, false).unwrap_err();
        assert!(refused
            .to_string()
            .contains("server.auth.allow_unauthenticated = true"));
        assert!(!open("192.168.1.2:8787", 0, false));
    }

    #[test]
    fn the_bound_address_and_configured_names_are_allowed_hosts() {
        let hosts = allowed_hosts("10.0.0.5:8787".parse().unwrap(), &["img.internal".into()]);
        for host in ["localhost", "127.0.0.1", "::1", "10.0.0.5", "img.internal"] {
            assert!(hosts.iter().any(|h| h == host), "{host}: {hosts:?}");
        }
        let any = allowed_hosts("0.0.0.0:8787".parse().unwrap(), &[]);
        assert!(!any.iter().any(|h| h == "0.0.0.0"), "{any:?}");
    }
}
