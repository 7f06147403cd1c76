//! The web gallery (`/gallery`) of the real binary in HTTP mode, in real headless Chromium:
//! it lists exactly the caller's stored images, search narrows them, hostile prompts stay
//! text, thumbnails load, and a request without a token or cookie is refused.

use serde_json::{json, Value};

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

#[tokio::test]
async fn the_mcp_app_renders_a_tool_result_and_asks_the_host_for_tool_calls() {
    let server = server().await;
    let client = connect(&server.mcp(), ALICE, &[]).await;
    // The image tools link the app; it is listed and read as an MCP App.
    let tools = client.list_all_tools().await.unwrap();
    for name in [
        "generate_image",
        "generate_images",
        "edit_image",
        "create_variation",
    ] {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        let meta = serde_json::to_value(&tool.meta).unwrap();
        assert_eq!(meta["ui"]["resourceUri"], "ui://imagegen/gallery", "{name}");
    }
    let listed = client.list_all_resources().await.unwrap();
    let app = listed
        .iter()
        .find(|r| r.uri == "ui://imagegen/gallery")
        .expect("the app is listed");
    assert_eq!(app.mime_type.as_deref(), Some("text/html;profile=mcp-app"));
    let read = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "ui://imagegen/gallery",
        ))
        .await
        .unwrap();
    let read = serde_json::to_value(&read).unwrap();
    let contents = &read["contents"][0];
    assert_eq!(contents["mimeType"], "text/html;profile=mcp-app");
    assert!(contents["_meta"]["ui"]["csp"].is_object(), "{contents}");
    let html = contents["text"].as_str().unwrap().to_string();

    let input = json!({"prompt": "a red lighthouse", "size": "1024x1024"});
    let result = call(&client, "generate_image", input.clone()).await;
    let result = serde_json::to_value(&result).unwrap();
    let uri = result["structuredContent"]["images"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let image = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let image = serde_json::to_value(&image).unwrap();
    // Paging history is for the app only, and each page carries a thumbnail per image.
    let paging = tools.iter().find(|t| t.name == "gallery_page").unwrap();
    let meta = serde_json::to_value(&paging.meta).unwrap();
    assert_eq!(meta["ui"]["visibility"], json!(["app"]), "{meta}");
    let page = serde_json::to_value(call(&client, "gallery_page", json!({})).await).unwrap();
    let listed = page["structuredContent"]["images"]
        .as_array()
        .unwrap()
        .len();
    let thumbs: Vec<&Value> = page["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "image")
        .collect();
    assert!(listed >= 1, "{page}");
    assert_eq!(thumbs.len(), listed, "a thumbnail per image");
    assert_eq!(
        thumbs[0]["_meta"]["uri"],
        page["structuredContent"]["images"][0]["uri"]
    );
    let _ = client.cancel().await;

    let Some(browser) = Browser::start().await else {
        return;
    };
    let harness =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apps-host.html");
    browser.goto(&format!("file://{}", harness.display())).await;
    browser
        .eval(
            "window.resources[arguments[0]] = arguments[1]; \
             window.toolResults.gallery_page = arguments[5]; \
             window.startApp(arguments[2], arguments[3], arguments[4]);",
            json!([uri, image, html, input, result, page]),
        )
        .await;
    browser
        .wait_for("the app's handshake", "return window.initialized")
        .await;
    // The tile of the result, with its preview from the tool result.
    browser.enter_frame("#app").await;
    let tiles = browser
        .wait_for(
            "the app's tile",
            "return document.querySelectorAll('.tile').length",
        )
        .await;
    assert_eq!(tiles, 1);
    let shown = browser
        .eval(
            "return [document.querySelector('.tile').dataset.uri, \
                     document.querySelector('.tile textarea').value]",
            json!([]),
        )
        .await;
    assert_eq!(shown, json!([uri, "a red lighthouse"]));
    let previewed = result["content"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "image");
    if previewed {
        browser
            .wait_for(
                "the preview",
                "const i = document.querySelector('.tile img'); return i.complete && i.naturalWidth",
            )
            .await;
    }
    browser.screenshot("mcp-app").await;
    // "Edit" with a changed prompt asks the host for edit_image on this image.
    browser
        .eval(
            "document.querySelector('.tile textarea').value = 'the same lighthouse at night'",
            json!([]),
        )
        .await;
    browser.click(".tile button.edit").await;
    browser.leave_frame().await;
    let asked = "return window.calls.filter(c => c.method === 'tools/call').map(c => c.params)";
    browser
        .wait_for(
            "the edit call",
            &asked
                .replace("return ", "return 1 <= ")
                .replace(".map(c => c.params)", ".length"),
        )
        .await;
    let calls = browser.eval(asked, json!([])).await;
    assert_eq!(
        calls[0],
        json!({"name": "edit_image", "arguments": {
            "prompt": "the same lighthouse at night", "images": [uri]}})
    );
    // "New sample" re-runs the call with the cache bypassed.
    browser.enter_frame("#app").await;
    browser.click(".tile button.sample").await;
    browser.leave_frame().await;
    browser
        .wait_for(
            "the re-run",
            &asked
                .replace("return ", "return 2 <= ")
                .replace(".map(c => c.params)", ".length"),
        )
        .await;
    let calls = browser.eval(asked, json!([])).await;
    assert_eq!(calls[1]["name"], "generate_image");
    assert_eq!(calls[1]["arguments"]["cache"], false);
    assert_eq!(calls[1]["arguments"]["size"], "1024x1024");
    // A click on the preview reads the full image through the host.
    browser.enter_frame("#app").await;
    browser.click(".tile img").await;
    browser
        .wait_for(
            "the full image",
            "const i = document.querySelector('#full.open img'); return i && i.complete && i.naturalWidth",
        )
        .await;
    browser.leave_frame().await;
    let reads = browser
        .eval(
            "return window.calls.filter(c => c.method === 'resources/read').map(c => c.params.uri)",
            json!([]),
        )
        .await;
    assert_eq!(reads, json!([uri]));
    // "Earlier images" pages the history through the app-only tool and shows its thumbnails.
    browser.enter_frame("#app").await;
    // A click on the full image closes it, as a person would.
    browser.click("#full").await;
    browser.click("#history-more").await;
    let shown = browser
        .wait_for(
            "the earlier images",
            "const t = [...document.querySelectorAll('.past img')]; \
             return t.length && t.every(i => i.complete && i.naturalWidth) && t.length",
        )
        .await;
    assert_eq!(shown, json!(listed));
    browser.screenshot("mcp-app-history").await;
    browser.leave_frame().await;
    let calls = browser.eval(asked, json!([])).await;
    assert_eq!(
        calls.as_array().unwrap().last().unwrap(),
        &json!({"name": "gallery_page", "arguments": {}})
    );
    browser.quit().await;
    server.stop().await;
}
