//! The web gallery (`/gallery`) of the real binary in HTTP mode, in real headless Chromium:
//! it lists exactly the caller's stored images, search narrows them, hostile prompts stay
//! text, thumbnails load, and a request without a token or cookie is refused.

use serde_json::json;

use crate::common::{
    http_server::{call, connect, token_file, HttpServer},
    webdriver::Browser,
};

const ALICE: &str = "gallery-alice-token-0f3c9a";
const BOB: &str = "gallery-bob-token-77e1d2";

/// A server with tokens for alice and bob, and the mock provider.
async fn server() -> HttpServer {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = format!(
        "[[server.auth.tokens]]\nname = \"alice\"\ntoken_file = {:?}\n\
         [[server.auth.tokens]]\nname = \"bob\"\ntoken_file = {:?}\n",
        token_file(&dir, "alice", ALICE),
        token_file(&dir, "bob", BOB),
    );
    HttpServer::start_mock(&config, &[]).await
}

/// Makes one image per prompt as the holder of `token`.
async fn make(server: &HttpServer, token: &str, prompts: &[&str]) {
    let client = connect(&server.mcp(), token, &[]).await;
    for prompt in prompts {
        let result = call(
            &client,
            "generate_image",
            json!({"prompt": prompt, "size": "1024x1024"}),
        )
        .await;
        assert_ne!(result.is_error, Some(true), "{result:?}");
    }
    let _ = client.cancel().await;
}

#[tokio::test]
async fn the_gallery_shows_the_callers_images_in_a_real_browser() {
    let server = server().await;
    let hostile =
        "green lighthouse <script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";
    make(
        &server,
        ALICE,
        &["red lighthouse at dusk", "a blue whale in the fog", hostile],
    )
    .await;
    make(&server, BOB, &["bob's private cat"]).await;
    let gallery = format!("{}/gallery", server.base);

    // Without a token or cookie: refused, with the login form for browsers.
    let http = reqwest::Client::new();
    let refused = http.get(&gallery).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let body = refused.text().await.unwrap();
    assert!(body.contains("action=\"/gallery/login\"") && !body.contains("lighthouse"));
    let thumb = http
        .get(format!("{gallery}/thumb/x.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), 401, "thumbnails need a caller too");
    // A bearer token works as for /mcp; bob sees only his own image.
    let bobs = http.get(&gallery).bearer_auth(BOB).send().await.unwrap();
    assert_eq!(bobs.status(), 200);
    let csp = bobs.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    let bobs = bobs.text().await.unwrap();
    assert_eq!(bobs.matches("class=\"tile\"").count(), 1, "{bobs}");
    assert!(bobs.contains("bob&#39;s private cat") && !bobs.contains("lighthouse"));
    // A login from another origin is refused (CSRF).
    let forged = http
        .post(format!("{gallery}/login"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ALICE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());

    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.goto(&gallery).await;
    browser
        .wait_for("the login form", "return document.querySelector('#token')")
        .await;
    browser.type_into("#token", ALICE).await;
    browser.click("#login").await;
    let tiles = browser
        .wait_for(
            "alice's tiles",
            "return document.querySelectorAll('li.tile').length",
        )
        .await;
    assert_eq!(tiles, 3, "alice's three images, not bob's");
    let text = browser
        .eval("return document.body.innerText", json!([]))
        .await;
    let text = text.as_str().unwrap();
    assert!(!text.contains("bob's private cat"), "{text}");
    assert!(text.contains("<script>window.pwned=1</script>"), "{text}");
    assert!(!text.contains(ALICE), "the token is never rendered back");
    // Newest first: the hostile prompt was made last.
    let first = browser
        .eval(
            "return document.querySelector('li.tile .prompt').textContent",
            json!([]),
        )
        .await;
    assert_eq!(first, hostile);
    let pwned = browser.eval("return window.pwned || null", json!([])).await;
    assert!(pwned.is_null(), "a prompt's markup ran: {pwned}");
    let cookie = browser.eval("return document.cookie", json!([])).await;
    assert_eq!(cookie, "", "the login cookie is HttpOnly");
    // Every thumbnail loads (from the server, at most 256 px).
    let widths = browser
        .wait_for(
            "the thumbnails",
            "const imgs = [...document.querySelectorAll('li.tile img')]; \
             return imgs.every(i => i.complete && i.naturalWidth > 0) \
               && imgs.map(i => i.naturalWidth)",
        )
        .await;
    assert_eq!(widths, json!([256, 256, 256]));
    browser.screenshot("gallery").await;

    // Search narrows the page to the matching prompts.
    browser.type_into("#q", "lighthouse").await;
    browser.click("form.search button").await;
    browser
        .wait_for(
            "the search results",
            "return location.search.includes('q=lighthouse') \
               && document.querySelectorAll('li.tile').length === 2",
        )
        .await;
    let prompts = browser
        .eval(
            "return [...document.querySelectorAll('li.tile .prompt')].map(p => p.textContent)",
            json!([]),
        )
        .await;
    assert_eq!(prompts, json!([hostile, "red lighthouse at dusk"]));
    browser.screenshot("gallery-search").await;

    // The sidecar is shown, and the full image opens in the lightbox.
    let sidecar = browser
        .eval(
            "return document.querySelector('li.tile details pre').textContent",
            json!([]),
        )
        .await;
    let sidecar: serde_json::Value = serde_json::from_str(sidecar.as_str().unwrap()).unwrap();
    assert_eq!(sidecar["caller"], "alice");
    assert_eq!(sidecar["prompt"], hostile);
    browser.click("li.tile a.full").await;
    browser
        .wait_for(
            "the full image",
            "const i = document.querySelector('#lightbox img'); \
             return document.querySelector('#lightbox').open && i.complete && i.naturalWidth",
        )
        .await;

    // Logging out clears the cookie: the gallery asks for a token again.
    browser.goto(&gallery).await;
    browser.click("header form button").await;
    browser
        .wait_for(
            "the login form after logging out",
            "return location.pathname === '/gallery/login' && document.querySelector('#token')",
        )
        .await;
    browser.goto(&gallery).await;
    browser
        .wait_for(
            "the login form",
            "return document.querySelector('#token') && !document.querySelector('li.tile')",
        )
        .await;
    browser.quit().await;
    let output = server.stop().await;
    assert!(!output.contains(ALICE) && !output.contains(BOB), "{output}");
}
