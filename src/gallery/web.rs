//! `/gallery` in HTTP mode: the caller's images newest first, with search (`?q=`, the history
//! index), each image's sidecar, a thumbnail and a download, as server-rendered HTML under a
//! strict CSP with one small script of ours (a lightbox; the pages work without it).
//!
//! The guard in [`crate::http`] names the caller (a bearer token, or the login cookie of
//! [`super::cookie`]); ownership is the store's (`Viewer`), as for `find_images`. Every value
//! from a sidecar is escaped: prompts are written by whoever calls the tools.

use std::{sync::Arc, time::SystemTime};

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Router,
};
use sha2::{Digest as _, Sha256};

use crate::{
    http::Caller,
    live::Live,
    storage::{
        index::{self, FindParams, FoundImage},
        sidecar::Sidecar,
        StoreErrorKind, Viewer,
    },
};

use super::{cookie, thumbs};

/// Images per gallery page.
pub const PAGE: u32 = 24;

/// The longest login form body read.
const MAX_FORM: usize = 8 * 1024;

/// The CSP of every gallery page: nothing but our own scripts, styles and images.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the gallery's handlers share.
pub struct Gallery {
    /// The live configuration: tokens, storage, the engine's store.
    pub live: Arc<Live>,
    /// Whether clients reach the server over HTTPS (`server.http.public_url`): the cookie is
    /// then `Secure`.
    pub secure: bool,
    /// The `Host` names accepted (as for `/mcp`), so a DNS-rebinding page cannot read it.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gallery")
            .field("secure", &self.secure)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Gallery {
    /// Whether the request's `Host` is one the server answers to.
    pub fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let name = host_name(host);
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The caller the request's login cookie names, if it is valid now.
    pub fn cookie_caller(&self, headers: &HeaderMap) -> Option<String> {
        let header = headers.get(header::COOKIE)?.to_str().ok()?;
        let value = cookie::find(header)?;
        cookie::verify(value, &self.live.snapshot().loaded, now())
    }
}

/// `host` without its port (`[::1]:80` is `::1`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes that need a caller (the guard in front of them inserts [`Caller`]).
pub fn routes(gallery: Arc<Gallery>) -> Router {
    Router::new()
        .route("/gallery", get(page))
        .route("/gallery/", get(page))
        .route("/gallery/image/{name}", get(image))
        .route("/gallery/thumb/{name}", get(thumb))
        .route("/gallery/meta/{name}", get(meta))
        .with_state(gallery)
}

/// The routes anyone may reach: the login form, logging in and out, the script and style.
pub fn public_routes(gallery: Arc<Gallery>) -> Router {
    Router::new()
        .route("/gallery/login", get(login_form).post(login))
        .route("/gallery/logout", post(logout))
        .route("/gallery/assets/gallery.js", get(script))
        .route("/gallery/assets/gallery.css", get(style))
        .with_state(gallery)
}

/// HTML-escapes `text` for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded for a URL path segment or query value.
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// An HTML page with the gallery's headers: the CSP, no caching, no sniffing, no framing.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // `no-referrer` would make browsers send `Origin: null` with our own form posts.
            (header::REFERRER_POLICY, "same-origin"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// The page skeleton around `main`.
fn layout(title: &str, caller: Option<&str>, main: &str) -> String {
    let who = match caller {
        Some(name) => format!(
            "<span class=\"who\">{}</span><form method=\"post\" action=\"/gallery/logout\">\
             <button type=\"submit\">Log out</button></form>",
            escape(name)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/gallery/assets/gallery.css\">\
         <script src=\"/gallery/assets/gallery.js\" defer></script></head><body>\
         <header><h1><a href=\"/gallery\">imagegen gallery</a></h1>{who}</header>\
         <main>{main}</main></body></html>\n",
        escape(title)
    )
}

/// The login page, with `message` (a fixed text of ours) above the form.
fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let note = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    let main = format!(
        "<section class=\"login\"><h2>Log in</h2>{note}\
         <p>Paste one of this server's access tokens (<code>[[server.auth.tokens]]</code>). \
         It is checked once and not kept; the browser keeps a signed cookie for 12 hours.</p>\
         <form method=\"post\" action=\"/gallery/login\">\
         <label>Token <input type=\"password\" name=\"token\" id=\"token\" \
         autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"login\">Log in</button></form></section>"
    );
    html(status, layout("Log in: imagegen gallery", None, &main))
}

/// What the guard answers a request it cannot name a caller for: the login page (401), with
/// the refusal's `WWW-Authenticate` kept for clients that are not browsers.
pub fn refused(refusal: Response) -> Response {
    let challenge = refusal.headers().get(header::WWW_AUTHENTICATE).cloned();
    let status = refusal.status();
    let mut page = login_page(
        if status == StatusCode::FORBIDDEN || status == StatusCode::SERVICE_UNAVAILABLE {
            status
        } else {
            StatusCode::UNAUTHORIZED
        },
        None,
    );
    if let Some(value) = challenge {
        page.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    page
}

/// 421 for a `Host` the server does not answer to.
pub fn wrong_host() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Misdirected Request: this Host is not one the server answers to \
         (server.http.allowed_hosts)\n",
    )
        .into_response()
}

/// Whose images `caller` sees (the rules of `find_images` and `resources/read`).
fn viewer_of(live: &Live, caller: &str) -> Viewer {
    crate::server::viewer(live, Some(caller.to_string()))
}

/// Reads the `q` and `cursor` of a query string (each bounded by the index's own checks).
fn query_params(query: Option<&str>) -> (String, Option<String>) {
    let mut q = String::new();
    let mut cursor = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "q" => q = value.into_owned(),
            "cursor" if !value.is_empty() => cursor = Some(value.into_owned()),
            _ => {}
        }
    }
    (q, cursor)
}

/// `GET /gallery[?q=words][&cursor=...]`: a page of the caller's images, newest first.
async fn page(
    State(gallery): State<Arc<Gallery>>,
    Extension(Caller(caller)): Extension<Caller>,
    request: Request,
) -> Response {
    let (q, cursor) = query_params(request.uri().query());
    let viewer = viewer_of(&gallery.live, &caller);
    let (index_path, store) = {
        let snapshot = gallery.live.snapshot();
        (
            snapshot.loaded.config.storage.index_path.clone(),
            snapshot.engine.store().clone(),
        )
    };
    let params = FindParams {
        query: Some(q.clone()).filter(|q| !q.trim().is_empty()),
        limit: Some(PAGE),
        cursor,
        ..FindParams::default()
    };
    let owner = match &viewer {
        Viewer::Caller(me) => Some(me.clone()),
        Viewer::Everyone => None,
    };
    let found = match params.to_query(owner) {
        Ok(query) => index::search_store(index_path, store.clone(), query).await,
        Err(e) => Err(e),
    };
    let search = format!(
        "<form class=\"search\" method=\"get\" action=\"/gallery\" role=\"search\">\
         <input type=\"search\" name=\"q\" id=\"q\" value=\"{}\" placeholder=\"Words in the prompt\">\
         <button type=\"submit\">Search</button></form>",
        escape(&q)
    );
    let page = match found {
        Ok(page) => page,
        Err(e) => {
            let main = format!(
                "{search}<p class=\"error\" role=\"alert\">{}</p>",
                escape(&e.message)
            );
            return html(
                StatusCode::BAD_REQUEST,
                layout("imagegen gallery", Some(&caller), &main),
            );
        }
    };
    // The sidecars are read together: a page is at most PAGE small files.
    let sidecars = futures::future::join_all(
        page.images
            .iter()
            .map(|image| store.sidecar(&image.name, &viewer)),
    )
    .await;
    let mut tiles = String::new();
    for (image, sidecar) in page.images.iter().zip(sidecars) {
        tiles.push_str(&tile(image, sidecar.ok().as_ref()));
    }
    let count = match page.images.len() {
        0 if q.trim().is_empty() => "No images yet.".to_string(),
        0 => "No image matches.".to_string(),
        1 => "1 image".to_string(),
        n => format!("{n} images"),
    };
    let more = page
        .next_cursor
        .map(|next| {
            format!(
                "<nav><a class=\"more\" href=\"/gallery?q={}&amp;cursor={}\">Older images</a></nav>",
                encode(&q),
                encode(&next)
            )
        })
        .unwrap_or_default();
    let main = format!(
        "{search}<p class=\"count\" id=\"count\">{count}</p>\
         <ul class=\"tiles\" id=\"tiles\">{tiles}</ul>{more}"
    );
    html(
        StatusCode::OK,
        layout("imagegen gallery", Some(&caller), &main),
    )
}

/// One image's tile: thumbnail (a link to the full image), prompt, facts, its sidecar.
fn tile(image: &FoundImage, sidecar: Option<&Sidecar>) -> String {
    let name = encode(&image.name);
    let prompt = if image.prompt.is_empty() {
        "(no prompt recorded)"
    } else {
        &image.prompt
    };
    let facts = [
        image.model.as_deref(),
        image.provider.as_deref(),
        Some(image.size.as_str()),
        Some(image.created.as_str()),
    ]
    .into_iter()
    .flatten()
    .map(escape)
    .collect::<Vec<_>>()
    .join(" · ");
    let sidecar = sidecar
        .and_then(|s| serde_json::to_string_pretty(s).ok())
        .map(|json| {
            format!(
                "<details><summary>Sidecar</summary><pre>{}</pre></details>",
                escape(&json)
            )
        })
        .unwrap_or_default();
    format!(
        "<li class=\"tile\" data-name=\"{attr}\"><a class=\"full\" href=\"/gallery/image/{name}\">\
         <img src=\"/gallery/thumb/{name}\" alt=\"{alt}\" loading=\"lazy\" width=\"256\"></a>\
         <p class=\"prompt\">{prompt}</p><p class=\"facts\">{facts}</p>\
         <p class=\"links\"><a href=\"/gallery/image/{name}?download=1\" download>Download</a> \
         <a href=\"/gallery/meta/{name}\">Sidecar JSON</a></p>{sidecar}</li>",
        attr = escape(&image.name),
        alt = escape(&prompt.chars().take(120).collect::<String>()),
        prompt = escape(prompt),
    )
}

/// A store failure as a plain-text answer (the message names no credentials).
fn store_refusal(kind: StoreErrorKind, message: &str) -> Response {
    let status = match kind {
        StoreErrorKind::NotFound => StatusCode::NOT_FOUND,
        StoreErrorKind::Refused => StatusCode::BAD_REQUEST,
        StoreErrorKind::Failed => StatusCode::BAD_GATEWAY,
    };
    let body = match kind {
        StoreErrorKind::NotFound => "Not Found: no such image of yours\n".to_string(),
        _ => format!("{message}\n"),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Headers for bytes from the store: never sniffed, never run (an SVG's scripts stay inert
/// under `sandbox`), cached only by the caller's browser.
fn file_headers(response: &mut Response, mime: &str) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
}

/// `GET /gallery/image/{name}[?download=1]`: the stored image, as the provider made it.
async fn image(
    State(gallery): State<Arc<Gallery>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let viewer = viewer_of(&gallery.live, &caller);
    let engine = gallery.live.engine();
    let cap = engine.output().max_read_mb.saturating_mul(1_000_000);
    let (bytes, mime) = match engine.store().read(&name, cap, &viewer).await {
        Ok(read) => read,
        Err(e) => return store_refusal(e.kind, &e.message),
    };
    let download = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "download=1"));
    let mut response = Body::from(bytes).into_response();
    file_headers(&mut response, mime);
    // Store names are plain ASCII-safe file names (checked by the store); quoted anyway.
    let disposition = format!(
        "{}; filename=\"{}\"",
        if download || mime == "image/svg+xml" {
            "attachment"
        } else {
            "inline"
        },
        name.replace(['"', '\\'], "_")
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `GET /gallery/thumb/{name}`: a 256-pixel thumbnail, made once and cached.
async fn thumb(
    State(gallery): State<Arc<Gallery>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let viewer = viewer_of(&gallery.live, &caller);
    let store = gallery.live.engine().store().clone();
    match thumbs::thumbnail(&store, &name, &viewer).await {
        Ok(thumb) => {
            let mut response = Body::from(thumb.bytes).into_response();
            file_headers(&mut response, thumb.mime);
            response
        }
        Err(thumbs::ThumbError::Store(e)) => store_refusal(e.kind, &e.message),
        Err(thumbs::ThumbError::Failed(message)) => {
            store_refusal(StoreErrorKind::Refused, &message)
        }
    }
}

/// `GET /gallery/meta/{name}`: the image's sidecar, as JSON.
async fn meta(
    State(gallery): State<Arc<Gallery>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let viewer = viewer_of(&gallery.live, &caller);
    let store = gallery.live.engine().store().clone();
    match store.sidecar(&name, &viewer).await {
        Ok(sidecar) => {
            let json = serde_json::to_string_pretty(&sidecar).unwrap_or_default();
            let mut response = format!("{json}\n").into_response();
            file_headers(&mut response, "application/json");
            response
        }
        Err(e) => store_refusal(e.kind, &e.message),
    }
}

/// `GET /gallery/login`: the login form.
async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// Whether a state-changing request comes from our own pages: its `Origin` names this host
/// (the cookie is also `SameSite=Strict`; both together stop cross-site form posts).
fn same_origin(headers: &HeaderMap) -> bool {
    // Browsers that send Fetch Metadata say outright where a request comes from.
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return false;
        }
    }
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(origin) = url::Url::parse(origin) else {
        return false;
    };
    let named = match (origin.host_str(), origin.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return false,
    };
    named.eq_ignore_ascii_case(host.trim())
}

/// `POST /gallery/login` (form `token=...`): sets the signed cookie for a static token's
/// holder and goes to the gallery; the token is never echoed, logged or kept.
async fn login(State(gallery): State<Arc<Gallery>>, request: Request) -> Response {
    if !gallery.host_allowed(request.headers()) {
        return wrong_host();
    }
    if request.method() != Method::POST || !same_origin(request.headers()) {
        tracing::warn!("refused a gallery login from another origin");
        return login_page(
            StatusCode::FORBIDDEN,
            Some("This form must be sent from the gallery's own login page."),
        );
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_FORM).await else {
        return login_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("The form is too large."),
        );
    };
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if token.is_empty() {
        return login_page(StatusCode::UNAUTHORIZED, Some("Enter a token."));
    }
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    drop(token);
    let issued = {
        let snapshot = gallery.live.snapshot();
        let mut found = None;
        // Every token is compared (in constant time), as the bearer check does.
        for t in snapshot.loaded.tokens() {
            if t.matches_digest(&digest) && found.is_none() {
                found = Some(t);
            }
        }
        found.map(|t| (t.name.clone(), cookie::issue(t, now())))
    };
    let Some((caller, value)) = issued else {
        tracing::warn!("refused a gallery login with an unknown token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not one this server accepts."),
        );
    };
    tracing::info!(caller, "gallery login");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/gallery")]).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie::set_header(&value, gallery.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /gallery/logout`: clears the cookie and goes to the login form.
async fn logout(State(gallery): State<Arc<Gallery>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("This form must be sent from the gallery's own pages."),
        );
    }
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/gallery/login")],
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie::clear_header(gallery.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /gallery/assets/gallery.js`: the lightbox.
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("gallery.js"))
}

/// `GET /gallery/assets/gallery.css`.
async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("gallery.css"))
}

fn asset(mime: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_echoed_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn host_names_lose_their_ports() {
        assert_eq!(host_name("127.0.0.1:8787"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8787"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
    }

    #[test]
    fn only_our_own_origin_may_post() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8787"));
        assert!(!same_origin(&headers), "no Origin: refused");
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8787"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
    }
}
